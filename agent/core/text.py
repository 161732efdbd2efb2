"""ASCII checks for text that comes from outside (jobs, boot environments, config values).

`str.isdigit()` is true for '²' and other Unicode digits that `int()` refuses (a ValueError
where the caller expected its own error), and `int()` takes Arabic-Indic digits, '_' and
spaces: a number from outside is its ASCII digits, checked here, or no number at all.
Runs on MicroPython.
"""


def is_digits(text):
    """True when `text` is one or more ASCII digits 0-9 and nothing else."""
    if not isinstance(text, str) or not text:
        return False
    for c in text:
        if not "0" <= c <= "9":
            return False
    return True
