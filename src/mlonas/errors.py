"""The one exception type the CLI turns into a one-line message and a non-zero exit.

Everything a user can get wrong (params, data, genotypes, diverging losses) is raised
as :class:`MlonasError` with a message that names *what* and *where*, so a researcher
reading a Snakemake log at 2 a.m. sees one line that tells them which file or key to fix.
"""


class MlonasError(Exception):
    """A user-facing error: the message is a single line naming the file/key at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
