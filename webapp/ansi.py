"""Rendering Ansible's coloured terminal output as escaped HTML.

Text is escaped first; SGR colour sequences then become ``<span>`` elements
with fixed class names, and every other escape sequence is dropped, so
nothing a playbook prints can become markup.
"""

import re

from markupsafe import Markup, escape

ESCAPE_SEQUENCE = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b[()][A-Za-z0-9]|\r(?!\n)")
# Parameters that follow 38;<mode> or 48;<mode>: 5;n or 2;r;g;b.
EXTENDED_COLOUR_PARAMETERS = {5: 1, 2: 3}
COLOURS = {
    30: "black",
    31: "red",
    32: "green",
    33: "yellow",
    34: "blue",
    35: "magenta",
    36: "cyan",
    37: "white",
}


def _classes(codes, current):
    classes = set(current)
    codes = iter(codes)
    for code in codes:
        if code in (38, 48):
            # Extended colour: 5;n (256 colours) or 2;r;g;b. Not rendered, but
            # its parameters must not be read as colour codes of their own.
            mode = next(codes, None)
            for _ in range(EXTENDED_COLOUR_PARAMETERS.get(mode, 0)):
                next(codes, None)
        elif code == 0:
            classes.clear()
        elif code == 1:
            classes.add("ansi-bold")
        elif code in (22,):
            classes.discard("ansi-bold")
        elif 30 <= code <= 37 or 90 <= code <= 97:
            classes = {c for c in classes if not c.startswith("ansi-fg-")}
            bright = "bright-" if code >= 90 else ""
            classes.add(f"ansi-fg-{bright}{COLOURS[code % 10 + 30]}")
        elif code == 39:
            classes = {c for c in classes if not c.startswith("ansi-fg-")}
    return classes


def to_html(text):
    """Return ``text`` as safe HTML with colours as spans."""
    parts = []
    classes = set()
    open_span = False
    position = 0
    for match in ESCAPE_SEQUENCE.finditer(text):
        parts.append(str(escape(text[position : match.start()])))
        position = match.end()
        if match.group(2) != "m":
            continue
        codes = [int(c) for c in match.group(1).split(";") if c.isdigit()] or [0]
        classes = _classes(codes, classes)
        if open_span:
            parts.append("</span>")
            open_span = False
        if classes:
            parts.append(f'<span class="{" ".join(sorted(classes))}">')
            open_span = True
    parts.append(str(escape(text[position:])))
    if open_span:
        parts.append("</span>")
    return Markup("".join(parts))


def strip(text):
    """Return ``text`` without escape sequences."""
    return ESCAPE_SEQUENCE.sub("", text)
