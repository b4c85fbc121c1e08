"""A TCP proxy that tests can stop and restart, to stage a server outage."""

from __future__ import annotations

import contextlib
import socket
import threading


class Proxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; ``stop()`` drops every connection."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self.port = listener.getsockname()[1]
        self._spawn(self._accept, listener, register=listener)

    def stop(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
            threads, self._threads = self._threads, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(5)

    def _spawn(self, target, *args, register: socket.socket) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._sockets.append(register)
            self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                return
            upstream.settimeout(None)
            self._spawn(self._pump, client, upstream, register=client)
            self._spawn(self._pump, upstream, client, register=upstream)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            # A reset on one side is a reset on the other: without this, a peer whose
            # other half died by RST (not FIN) would wait on an open socket forever.
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_RDWR)
