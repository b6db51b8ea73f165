"""Errors that reach the user as one line each, never as a traceback."""


class AutosegError(Exception):
    """A problem the user can fix; its message is printed as-is by the CLI."""


class DatasetInvalid(AutosegError):
    """Validation found problems; `problems` holds one line per problem."""

    def __init__(self, dataset_dir, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"{dataset_dir}: {len(self.problems)} problem(s) found, nothing was written")


class CasesFailed(AutosegError):
    """Some cases could not be processed; `problems` holds one line per case."""

    def __init__(self, what: str, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"{what}: {len(self.problems)} case(s) failed, nothing was written")
