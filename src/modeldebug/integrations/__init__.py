"""Callbacks for the frameworks people train with; each module imports its framework lazily.

    from modeldebug.integrations.lightning import ModelDebugCallback      # Lightning
    from modeldebug.integrations.transformers import ModelDebugCallback   # Hugging Face Trainer
    from modeldebug.integrations.accelerate import watch_accelerator      # accelerate loops
"""
