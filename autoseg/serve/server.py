"""`autoseg serve`: load the model once, bind, run uvicorn, clean up."""
from __future__ import annotations

import contextlib
import errno
import socket
import sys

from autoseg.errors import AutosegError
from autoseg.serve.options import ServeOptions

GRACEFUL_SHUTDOWN_S = 10  # after SIGTERM/Ctrl-C, requests in flight get this long before they are cut off
EXTRA_HINT = "autoseg serve needs the serve extra: pip install 'autoseg[serve]'"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) socket; one line for a port in use or an unknown host."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise AutosegError(f"--host {host}: cannot resolve ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise _bind_error(host, port, e) from None
    return sock


def _bind_error(host: str, port: int, e: OSError) -> AutosegError:
    if e.errno == errno.EADDRINUSE:
        return AutosegError(f"{host}:{port}: address already in use (is another server running there? "
                            f"choose another --port)")
    return AutosegError(f"cannot listen on {host}:{port}: {e.strerror or e}")


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(model, options: ServeOptions | None = None) -> None:
    """Load `model` (a package file or a training folder's models/) once and answer HTTP until stopped.

    Prints one line, "serving MODEL on http://HOST:PORT", once requests are answered. Binds to
    options.host (default 127.0.0.1); there is no authentication or TLS: expose it to other machines
    only behind a reverse proxy that adds them.
    """
    options = options or ServeOptions()
    options.check()
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn
    except ImportError:
        raise AutosegError(EXTRA_HINT) from None
    from autoseg.inference.predictor import Predictor
    from autoseg.serve.app import create_app
    from autoseg.serve.tempdirs import make_temp_root, remove_temp_root

    sock = _bind(options.host, options.port)  # fail fast, before the model loads; not listening yet
    try:
        temp_root = make_temp_root(options.temp_dir)
        try:
            predictor = Predictor.load(model, device=options.device, mirror=options.mirror)
            app = create_app(predictor, options, temp_root)
            try:
                sock.listen(2048)
            except OSError as e:
                raise _bind_error(options.host, options.port, e) from None
            port = sock.getsockname()[1]
            if options.host not in LOOPBACK:
                print(f"autoseg serve: listening on {options.host}, beyond this machine, without authentication "
                      f"or TLS; put a reverse proxy with both in front", file=sys.stderr, flush=True)
            config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False)
            server = _Server(config, f"serving {model} on {_url(options.host, port)}")
            server.run(sockets=[sock])
        finally:
            remove_temp_root(temp_root)
    finally:
        sock.close()
    if server.interrupted:
        raise KeyboardInterrupt


def _server_class():
    import uvicorn
    import signal

    class Server(uvicorn.Server):
        """uvicorn's server, printing the ready line, and not re-raising SIGTERM at the end (which would kill
        the process before the temp folder is removed); a Ctrl-C is re-raised by serve() after cleanup."""

        def __init__(self, config, ready_line: str):
            super().__init__(config)
            self.ready_line = ready_line
            self.interrupted = False

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                print(self.ready_line, flush=True)

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                captured = getattr(self, "_captured_signals", None)
                if captured:
                    self.interrupted = signal.SIGINT in captured
                    captured.clear()

    return Server


def _Server(config, ready_line: str):
    return _server_class()(config, ready_line)
