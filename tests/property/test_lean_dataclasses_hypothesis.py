"""The stand-ins of portside._lean_dataclasses behave as the modules they stand in for."""

from __future__ import annotations

import re
import subprocess
import sys

from hypothesis import example, given
from hypothesis import strategies as st

from portside._lean_dataclasses import _MODULE_IDENTIFIER, _ModuleIdentifierPattern

# What annotations look like, and what they could look like: words, dots, spaces of
# every kind, other Unicode letters and digits, punctuation.
ANNOTATION = st.text(
    alphabet=st.sampled_from(list("ab_Z9. \t\n\u00a0\u2003é²٣[]|,'\"-")) | st.characters(),
    max_size=24,
)


@given(ANNOTATION)
@example("ClassVar[int]")
@example("typing.ClassVar[int]")
@example(" dataclasses . InitVar [int]")
@example("typing.")
@example("a.b.c")
@example("")
def test_the_module_identifier_pattern_matches_as_re_does(text: str) -> None:
    expected = re.compile(_MODULE_IDENTIFIER).match(text)
    found = _ModuleIdentifierPattern().match(text)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert (found.group(1), found.group(2)) == (expected.group(1), expected.group(2))


def test_dataclasses_compiled_that_pattern_and_nothing_else_at_import() -> None:
    """The stand-in is right about dataclasses: it compiles exactly this pattern, so
    importing the models never imports re; ClassVar and InitVar annotations as strings
    still work."""
    probe = (
        "import sys\n"
        "from portside._lean_dataclasses import dataclasses\n"
        "assert 're' not in sys.modules, 'dataclasses imported re'\n"
        "import typing\n"
        "@dataclasses.dataclass\n"
        "class Record:\n"
        "    kept: 'int'\n"
        "    shared: 'typing.ClassVar[int]' = 3\n"
        "    seed: 'dataclasses.InitVar[int]' = 0\n"
        "    def __post_init__(self, seed):\n"
        "        pass\n"
        "print(sorted(f.name for f in dataclasses.fields(Record)))\n"
        "print(dataclasses._MODULE_IDENTIFIER_RE.match('typing.ClassVar').group(2))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == ["['kept']", "ClassVar"]
