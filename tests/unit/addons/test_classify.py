import pytest
from mitmproxy.test import taddons

from hush.addons.classify import PREVIEWERS, Classify, kind_of
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


# The User-Agents as the previewers send them (addons/classify.py PREVIEWERS names the sources;
# Gajim's was measured here, docs/apps/gajim.md)
SEEN = [
    "Gajim 1.7.3",
    "Synapse (bot; +https://github.com/matrix-org/synapse)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "TelegramBot (like TwitterBot)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "WhatsApp/2.23.20.0",
    "WhatsApp/2",
    "Twitterbot/1.0",
    "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5",
    "Iframely/1.3.1 (+https://iframely.com/docs/about)",
]


@pytest.mark.parametrize("ua", SEEN)
def test_the_previewers_seen_are_previews(ua):
    assert kind_of(ua, None, "/photo.jpg") == "preview"  # a previewer fetching an image is still a preview
    assert kind_of(ua.upper(), None, "/") == "preview"  # case-insensitive


@pytest.mark.parametrize("ua", [
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "GLib/2.74",  # Gajim's CONNECT for its XMPP stream, not a preview
    "Gajim",  # no version: not the string Gajim sends
    "Mozilla/5.0 Gajim 1.7.3",  # the glob is anchored: Gajim's string starts the User-Agent
    "Synapse/1.98.0",  # Synapse's federation client, not its previewer
    "Slackbot 1.0 (+https://api.slack.com/robots)",  # Slack's other fetcher, not its link expansion
    "curl/8.5.0",
    "",
])
def test_others_are_not_previews(ua):
    assert kind_of(ua, None, "/") == "other"


def test_every_previewer_has_a_source():
    for pattern, who, source in PREVIEWERS:
        assert pattern and who and source, pattern
        assert "http" in source or "/" in source, f"{pattern}: no URL or file in its source"
    assert len({p.lower() for p, _, _ in PREVIEWERS}) == len(PREVIEWERS)  # one table, no duplicates


def test_every_previewer_seen_matches_its_own_row():
    """Each pattern matches at least one real string above: no pattern is dead."""
    from hush.daemon.policy.glob import Glob

    for pattern, _, _ in PREVIEWERS:
        glob = Glob.parse(pattern, casefold=True)
        assert any(glob.matches_folded(ua.lower()) for ua in SEEN), pattern


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
