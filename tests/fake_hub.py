"""Stand-ins for the Hugging Face hub on loopback, so huggingface_hub's own code runs as it does online:

- `failing_hub` answers every request with one error, the way the real hub signals it (status and X-Error-Code);
- `serving_hub` serves local directories as hub repositories: the model-info API (siblings with sizes), and
  /resolve/ with the headers huggingface_hub reads (X-Repo-Commit, ETag, Content-Length; for LFS files a redirect
  to a CDN host with X-Linked-Etag and X-Linked-Size), and records every request.
"""

import fnmatch
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "5b1e4e9a7f30c1d2e3f405162738495a6b7c8d9e"
LFS_PATTERNS = ["*.safetensors", "*.pt", "*.wav"]  # what the real repository's .gitattributes puts in LFS


@contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def failing_hub(status: int, error_code: str) -> Iterator[str]:
    """Serves `status` with `X-Error-Code: error_code` on 127.0.0.1; yields the endpoint URL."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", f"fake hub: {error_code}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _answer

        def log_message(self, *args: object) -> None:
            pass

    with _serve(Handler) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


@contextmanager
def unreachable_hub() -> Iterator[str]:
    """An endpoint on 127.0.0.1 that takes no connection, as a network that drops packets: a listening socket whose
    backlog is full, so that the kernel ignores further connection requests. Yields the endpoint URL."""
    with socket.socket() as listener, socket.socket() as queued:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        queued.connect(listener.getsockname())  # fills the backlog
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@contextmanager
def refusing_hub() -> Iterator[str]:
    """An endpoint on 127.0.0.1 whose port refuses connections (bound, not listening). Yields the endpoint URL."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


@dataclass(frozen=True)
class _File:
    path: Path
    size: int
    git_sha1: str
    sha256: str | None  # LFS files only

    @classmethod
    def of(cls, path: Path, name: str) -> "_File":
        data = path.read_bytes()
        lfs = any(fnmatch.fnmatch(name, pattern) for pattern in LFS_PATTERNS)
        blob = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
                f"size {len(data)}\n").encode() if lfs else data
        git_sha1 = hashlib.sha1(f"blob {len(blob)}\0".encode() + blob).hexdigest()
        return cls(path, len(data), git_sha1, hashlib.sha256(data).hexdigest() if lfs else None)


@dataclass
class Hub:
    endpoint: str
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)

    def downloaded(self, repo_id: str) -> set[str]:
        """The files of `repo_id` whose content was fetched (a GET of /resolve/ or of its CDN redirect)."""
        prefix = f"file:{repo_id}/"
        return {path.removeprefix(prefix) for method, path in self.requests
                if method == "GET" and path.startswith(prefix)}


@contextmanager
def serving_hub(repos: dict[str, Path]) -> Iterator[Hub]:
    """Serves each directory of `repos` as the hub repository of its id, at one commit."""
    files = {repo_id: {p.relative_to(d).as_posix(): p for p in sorted(d.rglob("*")) if p.is_file()}
             for repo_id, d in repos.items()}
    meta = {repo_id: {name: _File.of(path, name) for name, path in names.items()} for repo_id, names in files.items()}
    by_sha256 = {(f.sha256): (repo_id, name) for repo_id, names in meta.items() for name, f in names.items()
                 if f.sha256}
    hub = Hub("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:
            self._route(body=False)

        def do_GET(self) -> None:
            self._route(body=True)

        def _route(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                self._model_info("/".join(parts[2:4]), body)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve("/".join(parts[:2]), "/".join(parts[4:]), body)
            elif parts[0] == "cdn" and len(parts) == 2 and parts[1] in by_sha256:
                repo_id, name = by_sha256[parts[1]]
                self._record(body, repo_id, name)
                self._send(200, {"Content-Length": str(meta[repo_id][name].size), "ETag": f'"{parts[1]}"'},
                           meta[repo_id][name].path.read_bytes() if body else b"")
            else:
                self._error(404, "EntryNotFound")

        def _record(self, body: bool, repo_id: str, name: str) -> None:
            hub.requests.append(("GET" if body else "HEAD", f"file:{repo_id}/{name}"))

        def _model_info(self, repo_id: str, body: bool) -> None:
            hub.requests.append(("GET" if body else "HEAD", f"api:{repo_id}"))
            if repo_id not in meta:
                self._error(404, "RepoNotFound")
                return
            siblings = []
            for name, f in meta[repo_id].items():
                sibling = {"rfilename": name, "size": f.size, "blobId": f.git_sha1}
                if f.sha256:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
                siblings.append(sibling)
            info = {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": COMMIT, "private": False,
                    "gated": "manual", "siblings": siblings}
            data = json.dumps(info).encode()
            self._send(200, {"Content-Type": "application/json", "Content-Length": str(len(data))},
                       data if body else b"")

        def _resolve(self, repo_id: str, name: str, body: bool) -> None:
            if repo_id not in meta:
                self._error(404, "RepoNotFound")
                return
            f = meta[repo_id].get(name)
            if f is None:
                self._error(404, "EntryNotFound")
                return
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{f.git_sha1}"'}
            if f.sha256:  # LFS: the hub redirects to its CDN, another host
                port = self.server.server_address[1]
                headers.update({"Location": f"http://localhost:{port}/cdn/{f.sha256}",
                                "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size),
                                "Content-Length": "0"})
                self._send(302, headers, b"")
                return
            if body:
                self._record(body, repo_id, name)
            headers["Content-Length"] = str(f.size)
            self._send(200, headers, f.path.read_bytes() if body else b"")

        def _error(self, status: int, code: str) -> None:
            self._send(status, {"X-Error-Code": code, "X-Error-Message": f"fake hub: {code}",
                                "X-Repo-Commit": COMMIT, "Content-Length": "0"}, b"")

        def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if data:
                self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    with _serve(Handler) as server:
        hub.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        yield hub
