"""One exception type for "the user asked for something that cannot work".

Chapters raise `WorkbookError` with a message a user can act on; `shared.cli.run_main`
turns it into a single `error: ...` line and exit code 2, so a traceback is only ever
shown for a real bug."""


class WorkbookError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class StackMissing(WorkbookError):
    """An optional stack (flash-attn, vLLM, llama.cpp, ...) is not usable here."""

    def __init__(self, stack: str, why: str, enable: str):
        self.stack, self.why, self.enable = stack, why, enable
        super().__init__(f"{stack} unavailable: {why}; enable with: {enable}")
