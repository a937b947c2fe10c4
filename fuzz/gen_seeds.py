#!/usr/bin/env python3
"""Regenerates the checked-in seed corpora in fuzz/seeds/<target>/.

Run from anywhere: `python3 fuzz/gen_seeds.py`. The input layouts are
described at the top of each fuzz_targets/<target>.rs file.
"""
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "seeds"
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(op, payload, fin=True, mask=KEY, rsv1=False):
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | op
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def decoder_input(stream, config=0, sizes=()):
    return bytes([config, len(sizes)]) + bytes(sizes) + stream


def close_payload(code, reason=b""):
    return struct.pack(">H", code) + reason


def header_records(pairs):
    names = {
        "upgrade": 0,
        "connection": 1,
        "sec-websocket-key": 2,
        "sec-websocket-version": 3,
        "sec-websocket-protocol": 4,
        "sec-websocket-extensions": 5,
        "sec-websocket-accept": 6,
        "host": 7,
        "origin": 8,
    }
    out = b""
    for name, value in pairs:
        value = value.encode()
        out += bytes([names[name], len(value)]) + value
    return out


SEEDS = {
    "frame_decoder": {
        "masked_text": decoder_input(frame(TEXT, b"Hello")),
        "unmasked_text": decoder_input(frame(TEXT, b"Hello", mask=None)),
        "fragmented_with_ping": decoder_input(
            frame(TEXT, "κό".encode(), fin=False)
            + frame(PING, b"p")
            + frame(CONT, "σμε".encode()),
            sizes=(3, 1, 2),
        ),
        "byte_at_a_time": decoder_input(
            frame(BINARY, b"\x00\x01\x02", fin=False) + frame(CONT, b"\x03"),
            sizes=(1,),
        ),
        "ping_pong": decoder_input(frame(PING, b"ping") + frame(PONG, b"")),
        "close_bye": decoder_input(
            frame(CLOSE, close_payload(1000, b"bye")) + frame(TEXT, b"ignored")
        ),
        "close_bad_code": decoder_input(frame(CLOSE, close_payload(1005))),
        "len16_binary": decoder_input(frame(BINARY, bytes(range(200))), sizes=(7, 100)),
        "len64_header": decoder_input(
            bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 40) + KEY
        ),
        "rsv1_extension": decoder_input(
            frame(TEXT, b"ab", fin=False, rsv1=True) + frame(CONT, b"c"),
            config=4,
        ),
        "bad_utf8_fragment": decoder_input(
            frame(TEXT, bytes([0xCE, 0xBA, 0xED]), fin=False)
            + frame(CONT, bytes([0xA0, 0x80])),
            sizes=(9,),
        ),
        "too_many_fragments": decoder_input(
            frame(BINARY, b"a", fin=False)
            + b"".join(frame(CONT, b"a", fin=False) for _ in range(4)),
            config=1,
        ),
    },
    "handshake": {
        "valid_request": bytes([0x04])
        + header_records(
            [
                ("upgrade", "websocket"),
                ("connection", "keep-alive, Upgrade"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
                ("sec-websocket-protocol", "chat, superchat"),
                (
                    "sec-websocket-extensions",
                    'permessage-deflate; client_max_window_bits, x-foo; a="1"',
                ),
                ("host", "example.com"),
            ]
        ),
        "base_plus_extensions": bytes([0x14])
        + header_records(
            [
                ("sec-websocket-extensions", "permessage-deflate;server_no_context_takeover"),
                ("sec-websocket-protocol", "mqtt"),
            ]
        ),
        "bad_version": bytes([0x14])
        + bytes([0x83, 1])
        + b"8",
        "post_request": bytes([0x17]),
    },
    "utf8": {
        "ascii_latin": bytes([0]) + "Hello-µ@ßöäüàá-UTF-8!!".encode(),
        "split_multibyte": bytes([1, 1]) + "κόσμε𝄞€".encode(),
        "surrogate": bytes([2, 3, 1]) + bytes([0xCE, 0xBA, 0xED, 0xA0, 0x80, 0x65]),
        "truncated": bytes([0]) + bytes([0xF0, 0x9D]),
        "too_big": bytes([0]) + bytes([0xF4, 0x90, 0x80, 0x80]),
    },
    "close": {
        "empty": b"",
        "normal_bye": close_payload(1000, b"bye"),
        "code_only": close_payload(1000),
        "one_byte": b"\x03",
        "reserved_1005": close_payload(1005),
        "app_4000_long_reason": close_payload(4000, "é".encode() * 70),
        "bad_utf8_reason": close_payload(1001, b"\xff"),
    },
}


def main():
    for target, seeds in SEEDS.items():
        d = ROOT / target
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for name, data in seeds.items():
            (d / name).write_bytes(data)
        print(f"{d}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
