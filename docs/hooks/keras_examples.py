"""Griffe extension: read Keras-format `Example:` sections as Google ones.

Keras docstrings put the doctest lines of an `Example:` section at the
section's own indentation, after a blank line::

    Example:

    >>> layer(x).shape
    (2, 8, 64)

The Google parser wants the section's lines indented below its title, with no
blank line in between, and knows only the plural title; otherwise it renders
the `>>>` lines as nested quotes. This extension rewrites such sections when
the API pages are built;
the source files keep Keras' format (and their doctests run unchanged).
"""

import re

import griffe

SECTION_TITLE = re.compile(r"^(Examples?):\s*$")
# Titles that end an example section written at column 0.
NEXT_SECTION = re.compile(
    r"^(Args|Arguments|Attributes|Call arguments|Input shape|Output shape|"
    r"Raises|References?|Returns|Weights|Yields|Notes?|Warnings?):\s*$"
)


def indent_examples(text):
    """`text` with each column-0 `Example(s):` section indented by 4 spaces."""
    lines = text.split("\n")
    result, in_example, after_title = [], False, False
    for index, line in enumerate(lines):
        if in_example and NEXT_SECTION.match(line):
            in_example = False
        if not in_example:
            title = SECTION_TITLE.match(line)
            # Griffe knows `Examples:`; Keras mostly writes `Example:`.
            result.append("Examples:" if title else line)
            if title:
                below = [later for later in lines[index + 1 :] if later.strip()]
                # Already Google style (indented below its title): leave it.
                in_example = bool(below) and not below[0].startswith(" ")
                after_title = True
        elif line.strip():
            result.append(f"    {line}")
            after_title = False
        elif not after_title:
            result.append("")
    return "\n".join(result)


class KerasExamples(griffe.Extension):
    """Re-indent Keras-format example sections in every docstring."""

    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = indent_examples(obj.docstring.value)
