"""Text from outside (bundles, roots, servers, jobs) on an operator's terminal, made inert.

Invariant: what `printable` returns holds no control character (C0, DEL, C1), no Unicode
bidi override and no line separator, so nothing a bundle, a root or a server sends can move
the cursor, clear the screen, retitle the window, fake a second line or hide text.
"""

# Bidi embeddings, overrides and isolates, marks, and the Unicode line/paragraph separators.
_INVISIBLE = set("\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e")
_INVISIBLE |= set("\u2066\u2067\u2068\u2069")


def printable(text):
    """`text` with every such character written as \\xNN or \\uNNNN."""
    out = []
    for c in str(text):
        o = ord(c)
        if o < 0x20 or 0x7F <= o < 0xA0 or c in _INVISIBLE:
            out.append("\\x%02x" % o if o < 0x100 else "\\u%04x" % o)
        else:
            out.append(c)
    return "".join(out)


def printable_lines(text):
    """`printable` line by line: keeps the newlines of a multi-line text (a traceback)."""
    return "\n".join(printable(line) for line in str(text).split("\n"))
