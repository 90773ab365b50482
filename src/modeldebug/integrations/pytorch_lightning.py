"""The Lightning callback for the ``pytorch_lightning`` package (``lightning.pytorch``'s is in
:mod:`modeldebug.integrations.lightning`, which describes what it does)::

    from modeldebug.integrations.pytorch_lightning import ModelDebugCallback
    pytorch_lightning.Trainer(callbacks=[ModelDebugCallback()])
"""

from __future__ import annotations

from modeldebug.integrations.lightning import _import_base, callback_class


def __getattr__(name: str):
    if name == "ModelDebugCallback":  # pytorch_lightning imported on first use
        cls = globals()[name] = callback_class(_import_base("pytorch_lightning"))
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
