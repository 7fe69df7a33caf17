import pytest

from hush.daemon.yamlschema import LoadError, LocatedError, Location, Reader


def test_location_forms():
    loc = Location("p/x.yaml", 12, 5)
    assert str(loc) == "p/x.yaml:12:5" and loc.short == "p/x.yaml:12"
    assert str(LocatedError(loc, "bad")) == "p/x.yaml:12:5: bad"


def test_load_error_sorts_by_place():
    e = LoadError([LocatedError(Location("b", 1, 1), "2"), LocatedError(Location("a", 9, 1), "1")])
    assert str(e) == "a:9:1: 1\nb:1:1: 2"


@pytest.mark.parametrize("text, method, args, message", [
    ("v: yes", "boolean", ("flag",), "f:1:4: flag must be true or false, not 'yes' (YAML 1.1 spelling)"),
    ("v: 1.5", "integer", ("n", 0, 9), "f:1:4: n must be a whole number, not '1.5'"),
    ("v: ''", "string", ("s",), "f:1:4: s must not be empty"),
    ("v: [a]", "string", ("s",), "f:1:4: s must be a string, not a list"),
    ("v:", "items", ("xs",), "f:1:3: xs must be a value or a list, not an empty value"),
])
def test_scalar_errors(text, method, args, message):
    r = Reader("f")
    root = r.compose(text)
    value = root.value[0][1]
    assert getattr(r, method)(value, *args) is None or method == "items"
    assert [str(e) for e in r.errors] == [message]


def test_boolean_and_integer_ok():
    r = Reader("f")
    root = r.compose("a: true\nb: 0x1F\nc: 1_000\n")
    a, b, c = (v for _, v in root.value)
    assert r.boolean(a, "a") is True and r.integer(b, "b", 0, 100) == 31 and r.integer(c, "c", 0, 5000) == 1000
    assert r.errors == []
