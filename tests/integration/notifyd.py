"""A small freedesktop notification service for the tests: owns
org.freedesktop.Notifications on the session bus ($DBUS_SESSION_BUS_ADDRESS),
answers Notify with a new id and writes a JSON line per call to LOG; with
``--answer KEY`` it then presses that button (emits ActionInvoked(id, KEY))
after ``--after`` seconds, as a user would.  Prints "ready" once the name is its.

    python tests/integration/notifyd.py LOG [--answer allow:once] [--after 0.3]
"""

import argparse
import json
import sys
import threading
import time

from jeepney import DBusAddress, HeaderFields, MessageType, new_method_return, new_signal
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

NAME = INTERFACE = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("--answer")
    parser.add_argument("--after", type=float, default=0.3)
    args = parser.parse_args()
    conn = open_dbus_connection(bus="SESSION")
    reply = conn.send_and_get_reply(message_bus.RequestName(NAME, 4))  # DO_NOT_QUEUE
    assert reply.body[0] == 1, f"could not own {NAME}: {reply.body}"
    print("ready", flush=True)
    lock = threading.Lock()
    next_id = 0
    emitter = DBusAddress(PATH, interface=INTERFACE)

    def press(nid: int, key: str) -> None:
        time.sleep(args.after)
        with lock:
            conn.send(new_signal(emitter, "ActionInvoked", "us", (nid, key)))
            conn.send(new_signal(emitter, "NotificationClosed", "uu", (nid, 2)))

    while True:
        msg = conn.receive()
        fields = msg.header.fields
        if msg.header.message_type != MessageType.method_call:
            continue
        member = fields.get(HeaderFields.member)
        with lock:
            if member == "Notify":
                next_id += 1
                conn.send(new_method_return(msg, "u", (next_id,)))
            elif member in ("CloseNotification", "GetCapabilities"):
                conn.send(new_method_return(msg, "as", ([],)) if member == "GetCapabilities"
                          else new_method_return(msg))
            else:
                continue
        app, _, _, summary, body, actions, _, timeout = msg.body if member == "Notify" else (None,) * 8
        with open(args.log, "a") as f:
            f.write(json.dumps({"member": member, "id": next_id if member == "Notify" else msg.body[0],
                                "app": app, "summary": summary, "body": body, "actions": actions,
                                "timeout": timeout}) + "\n")
        if member == "Notify" and args.answer:
            threading.Thread(target=press, args=(next_id, args.answer), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
