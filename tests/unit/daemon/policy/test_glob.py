import pytest

from hush.daemon.policy.glob import MAX_PATTERN, Glob


@pytest.mark.parametrize("pattern, text, expected", [
    ("/a", "/a", True),
    ("/a", "/ab", False),
    ("/a*", "/a", True),
    ("/a*", "/a/b/c", True),
    ("*/preview_url", "/_matrix/media/v3/preview_url", True),
    ("/_matrix/*/preview_url", "/_matrix/client/v1/media/preview_url", True),
    ("/_matrix/*/preview_url", "/_matrix/preview_url", False),
    ("/a?c", "/abc", True),
    ("/a?c", "/ac", False),
    ("*a*b*c*", "xxaxxbxxcxx", True),
    ("*a*b*c*", "xxcxxbxxaxx", False),
    ("a*a", "a", False),
    ("a*a", "aa", True),
    ("*ab?d*", "xxabxdabcd", True),
    ("*", "", True),
    ("**", "anything", True),
    ("?", "", False),
])
def test_matches(pattern, text, expected):
    assert Glob.parse(pattern).matches(text) is expected


def test_casefold():
    g = Glob.parse("WhatsApp/*", casefold=True)
    assert g.matches("whatsapp/2.19.305 A") and g.matches("WHATSAPP/2")
    assert not Glob.parse("WhatsApp/*").matches("whatsapp/2")


@pytest.mark.parametrize("pattern, message", [
    ("", "empty pattern"),
    ("/[a]", "character classes ('[') are not supported in '/[a]'; use * and ?"),
    ("/{a,b}", "braces ('{') are not supported in '/{a,b}'; use * and ?"),
    ("x" * (MAX_PATTERN + 1), f"pattern longer than {MAX_PATTERN} characters"),
])
def test_rejected(pattern, message):
    with pytest.raises(ValueError) as e:
        Glob.parse(pattern)
    assert str(e.value) == message


def test_pathological_pattern_matches_like_the_reference():
    # The shape that makes backtracking matchers exponential; ours does one
    # find per piece.  Compare with fnmatch on inputs small enough for it.
    import fnmatch

    pattern = "*a" * 12 + "b"
    for text in ("a" * 30, "a" * 30 + "b", "ab" * 15):
        assert Glob.parse(pattern).matches(text) == fnmatch.fnmatchcase(text, pattern)


def test_matching_is_one_find_per_piece(monkeypatch):
    """No backtracking: a pattern with k stars does at most k-1 searches,
    whatever the text — the shape that makes regex/fnmatch engines blow up."""
    import hush.daemon.policy.glob as glob_module

    calls = []
    real = glob_module._find

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(glob_module, "_find", counting)
    pattern = "*a" * 30 + "b"
    g = Glob.parse(pattern)
    assert not g.matches("a" * 200_000)  # fails late, the worst case for backtracking
    assert len(calls) <= 30
    calls.clear()
    assert g.matches("a" * 200_000 + "b")
    assert len(calls) <= 30
