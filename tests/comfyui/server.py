"""Start a real ComfyUI server (``main.py --cpu``) on 127.0.0.1 and talk to its HTTP API."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ComfyServer:
    process: subprocess.Popen
    url: str
    log_path: Path

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def post_prompt(self, prompt: dict[str, Any]) -> tuple[int, Any]:
        return self.request("POST", "/prompt", {"prompt": prompt, "client_id": "steadydancer-e2e"})

    def wait_for_history(self, prompt_id: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            status, history = self.request("GET", f"/history/{prompt_id}")
            if status == 200 and prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") in ("success", "error"):
                    return entry
            time.sleep(1.0)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout_s} s:\n{self.log_tail()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def start_server(comfyui: Path, root: Path, extra_model_paths: Path, timeout_s: float = 300,
                 front_end_root: Path | None = None) -> ComfyServer:
    """``main.py --cpu`` with every writable folder under ``root``; waits until it serves requests.

    ``front_end_root``: a real frontend build to serve (browser tests); default an empty page.
    """
    port = free_port()
    frontend = front_end_root
    if frontend is None:
        frontend = root / "frontend"
        frontend.mkdir(exist_ok=True)
        (frontend / "index.html").write_text("<html></html>")
    for name in ("input", "output", "temp", "user"):
        (root / name).mkdir(exist_ok=True)
    log_path = root / "comfyui.log"
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-api-nodes", "--front-end-root", str(frontend),
               "--extra-model-paths-config", str(extra_model_paths),
               "--input-directory", str(root / "input"), "--output-directory", str(root / "output"),
               "--temp-directory", str(root / "temp"), "--user-directory", str(root / "user"),
               "--database-url", f"sqlite:///{root / 'comfyui.db'}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = ComfyServer(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {process.returncode} during start-up:\n{server.log_tail()}")
        try:
            if server.request("GET", "/system_stats")[0] == 200:
                return server
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(1.0)
    server.stop()
    raise TimeoutError(f"ComfyUI did not start in {timeout_s} s:\n{server.log_tail()}")
