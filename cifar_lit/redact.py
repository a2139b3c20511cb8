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
