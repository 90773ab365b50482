import pytest


@pytest.fixture
def ten_steps_rule():
    """A rule of the user's that finds a high problem once ten steps are recorded: something for
    `stop_on` to stop at, whatever the training does."""
    from modeldebug.rules import Rule
    from modeldebug.rules.base import col

    class TenSteps(Rule):
        id = "ten_steps"
        kind = "custom.ten_steps"
        reads = ("steps.loss",)

        def check(self, ev):
            n = len(col(ev.steps, "loss"))
            return [self.finding(severity="high", confidence=1.0, message=f"{n} steps", evidence={})] if n >= 10 else []

    return TenSteps
