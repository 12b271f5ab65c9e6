"""The one error type users see: a problem and its fix, printed by the CLI as a single line."""


class UavError(Exception):
    """An error caused by input or environment, not by a bug: ``problem`` says what, ``fix`` says how."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}; {fix}" if fix else problem)
