"""Domain exceptions. The CLI turns every ``SamsearchError`` into a one-line message and exit code 1."""


class SamsearchError(Exception):
    """Base of every error a user can cause and fix; ``str()`` is one line."""


class InputError(SamsearchError):
    """Bad input from the user: a file, an option value, a prompt."""


class EmbeddingSpaceMismatch(SamsearchError):
    """The home holds vectors from another model/recipe; mixing them would make search meaningless."""


class NotFoundError(SamsearchError):
    """A named thing (segment, bank, run, image) does not exist."""


def one_line(text: object) -> str:
    """Collapse a (possibly multi-line) driver message into one line."""
    return " ".join(str(text).split())
