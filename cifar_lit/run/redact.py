"""Credentials never leave memory: URLs are recorded without ``user:password@`` or query string.

No heavy imports: the config uses it to serialise itself.
"""

from __future__ import annotations

import urllib.parse


def public_url(url: str) -> str:
    """``url`` without ``user:password@``, query string or fragment: safe to print or store
    (signed mirror URLs carry their token in the query).

    >>> public_url("https://me:pw@mirror.example/c10.tar.gz?token=abc#x")
    'https://mirror.example/c10.tar.gz'
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def public_args(argv: list[str]) -> list[str]:
    """Command-line arguments with every URL in them made public (``--flag URL`` and
    ``--flag=URL`` alike): what a tracker may record of the command that started a run.

    >>> public_args(["train.py", "--download-url", "https://u:p@m.example/a?t=1", "--x=https://m.example/b?t=2"])
    ['train.py', '--download-url', 'https://m.example/a', '--x=https://m.example/b']
    """
    def one(arg: str) -> str:
        if "://" not in arg:
            return arg
        flag, eq, value = arg.partition("=")
        return f"{flag}={public_url(value)}" if eq and "://" in value and "://" not in flag else public_url(arg)

    return [one(a) for a in argv]
