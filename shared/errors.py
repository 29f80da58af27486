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


class SelfCheckError(Exception):
    """Our implementation disagrees with its reference (torch, HF, a closed form): a bug in the
    workbook, not in the user's input. Raised by every self-check in every chapter, so a failed
    check always reads the same way; `shared.cli` prints it as one `self-check failed:` line
    and exits 3 (tests see the exception itself)."""


def self_check(ok: bool, message: str) -> None:
    """Raise SelfCheckError(message) unless `ok`: the one way chapters assert against a reference."""
    if not ok:
        raise SelfCheckError(message)
