import pytest
from mitmproxy.test import taddons

from hush.addons.classify import Classify, kind_of
from hush.addons.notes import notes

from .helpers import http_flow


@pytest.mark.parametrize("ua, accept, path, kind", [
    ("WhatsApp/2.19.305 A", None, "/", "preview"),
    ("WhatsApp/2", None, "/", "preview"),  # Signal Desktop's fetcher
    ("TelegramBot (like TwitterBot)", None, "/", "preview"),
    ("facebookexternalhit/1.1", None, "/", "preview"),
    ("Mozilla/5.0", "image/avif,image/webp,*/*", "/a", "media"),
    ("Mozilla/5.0", None, "/og.PNG?x=1", "media"),
    ("Mozilla/5.0", "text/html", "/", "other"),
    (None, None, "/", "other"),
])
def test_kind_of(ua, accept, path, kind):
    assert kind_of(ua, accept, path) == kind


def test_carried_is_taken_before_any_action():
    classify = Classify()
    with taddons.context(classify):
        f = http_flow("http://a.org/", headers={"User-Agent": "WhatsApp/2", "Cookie": "a=1; b=2",
                                                "Referer": "https://chat/x", "Accept-Language": "de"})
        classify.requestheaders(f)
    assert notes(f).kind == "preview"
    assert notes(f).carried == {
        "user_agent": "WhatsApp/2", "cookies": 2, "referer": "https://chat/x",
        "accept_language": "de", "range": None, "authorization": False,
    }
