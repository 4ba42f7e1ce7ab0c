"""A local HTTP server that speaks Ollama's documented REST protocol, backed by a real llmkit engine.

No Ollama server can be installed on these machines, so the adapter is tested against this: real HTTP
on loopback, request and response shapes from ollama/ollama (docs/api.md, docs/api/streaming.mdx,
docs/api/errors.mdx, api/types.go): NDJSON streaming with `done`/`done_reason` and nanosecond metrics on
the last line, `{"error": ...}` bodies with 400/404 statuses, an `{"error": ...}` line mid-stream, and
Ollama's option defaults (api/types.go DefaultOptions) for whatever a request leaves out. Generation is
real: llama.cpp on SmolLM2 through llmkit. It is a test fixture, not an Ollama replacement: no model
store, no GPU scheduling. Requests run concurrently; the backing engine serves them first come, first
served, as Ollama does with OLLAMA_NUM_PARALLEL=1. Like Ollama, it stops a streamed request whose client
has gone away (Go's net/http cancels the request's context when the connection closes).

What tests may inspect or inject (beside real traffic):
    requests            the bodies received
    served              per generation request: its outcome ("answered", "client gone") and lines sent
    in_flight, max_in_flight, disconnects   generation requests being served, the most at once since
                        `reset_counts()`, and those whose client went away before the reply was complete
    fail_after_chunks   an `{"error": ...}` line mid-stream after that many lines
    reply_error         (status, message): generation requests get that `{"error": ...}` reply
    hold                while set, generation requests get no reply at all (a server that never answers)
    line_delay          seconds to wait before each streamed line (a slower model: a reply that lasts)

Run on its own (a process a test can kill): python ollama_protocol.py [--port N] [--model-name NAME]
[--n-threads N]; it prints its URL once it serves.
"""

from __future__ import annotations

import datetime
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import llmkit

# ollama/ollama api/types.go DefaultOptions (the ones llmkit maps)
DEFAULT_OPTIONS = {"num_predict": -1, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0,
                   "repeat_last_n": 64, "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                   "seed": -1, "stop": [], "num_ctx": 4096}


class OllamaProtocolServer:
    def __init__(self, engine: llmkit.Engine, model_name: str, *, pullable: tuple[str, ...] = (), port: int = 0) -> None:
        self.engine = engine
        self.models = {model_name}
        self.pullable = set(pullable)
        self.requests: list[dict[str, Any]] = []  # bodies received, for tests to inspect
        self.served: list[dict[str, Any]] = []  # per generation request: path, outcome, NDJSON lines sent
        self.fail_after_chunks: int | None = None  # inject an {"error": ...} line mid-stream
        self.reply_error: tuple[int, str] | None = None  # inject an error reply to generation requests
        self.hold = threading.Event()  # while set, generation requests get no reply
        self.line_delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.disconnects = 0
        self.changed = threading.Condition()  # notified when the counts change
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "OllamaProtocolServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hold.clear()
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset_counts(self) -> None:
        with self.changed:
            self.max_in_flight = self.in_flight
            self.disconnects = 0

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until `predicate(self)` holds (checked whenever the counts change)."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), timeout)

    def _count(self, delta: int = 0, disconnect: bool = False) -> None:
        with self.changed:
            self.in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.disconnects += disconnect
            self.changed.notify_all()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked NDJSON needs it

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/api/tags":
                    models = [{"name": m, "model": m, "modified_at": _now(), "size": 98362432, "digest": "sha256:" + "0" * 64,
                               "details": {"format": "gguf", "family": "llama", "parameter_size": "135M", "quantization_level": "Q4_1"}}
                              for m in sorted(server.models)]
                    return self._json(200, {"models": models})
                self._json(404, {"error": "404 page not found"})

            def do_POST(self) -> None:
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                except json.JSONDecodeError as exc:
                    return self._json(400, {"error": f"invalid character in request body: {exc}"})
                server.requests.append({"path": self.path, **body})
                routes = {"/api/generate": self._generate, "/api/chat": self._generate, "/api/show": self._show, "/api/pull": self._pull}
                if self.path not in routes:
                    return self._json(404, {"error": "404 page not found"})
                if self.path not in ("/api/generate", "/api/chat"):
                    return routes[self.path](body)
                # A generation request is in flight until the last byte of its reply is about to go out,
                # so a client that sends its next request on seeing that byte is never counted twice.
                self._counted, self._lines = True, 0
                server._count(+1)
                try:
                    self._generate(body)
                except (BrokenPipeError, ConnectionResetError, _ClientGone):
                    self._uncount("client gone")
                    self.close_connection = True
                finally:
                    self._uncount()

            def _uncount(self, outcome: str = "answered") -> None:
                if self._counted:
                    self._counted = False
                    server.served.append({"path": self.path, "outcome": outcome, "lines": self._lines})
                    server._count(-1, disconnect=outcome == "client gone")

            # ---- endpoints ------------------------------------------------------------------------

            def _show(self, body: dict) -> None:
                if body.get("model") not in server.models:
                    return self._json(404, {"error": f"model '{body.get('model')}' not found"})
                self._json(200, {"modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
                                 "details": {"format": "gguf", "family": "llama", "parameter_size": "135M", "quantization_level": "Q4_1"},
                                 "model_info": {"general.architecture": "llama", "llama.context_length": server.engine.context_length},
                                 "capabilities": ["completion"]})

            def _pull(self, body: dict) -> None:
                name = body.get("model")
                if name not in server.pullable | server.models:
                    return self._json(500, {"error": "pull model manifest: file does not exist"})
                events = [{"status": "pulling manifest"}]
                events += [{"status": "pulling 0123abcd", "digest": "sha256:0123abcd", "total": 1000, "completed": c} for c in (0, 500, 1000)]
                events += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
                server.models.add(name)
                if body.get("stream", True):
                    self._ndjson_start()
                    for event in events:
                        self._line(event)
                    self._ndjson_end()
                else:
                    self._json(200, {"status": "success"})

            def _generate(self, body: dict) -> None:
                chat = self.path == "/api/chat"
                while server.hold.is_set():  # a server that never answers (until released)
                    if self._client_gone():
                        raise _ClientGone
                    time.sleep(0.02)
                if server.reply_error is not None:
                    status, message = server.reply_error
                    return self._json(status, {"error": message})
                if body.get("model") not in server.models:
                    return self._json(404, {"error": f"model '{body.get('model')}' not found, try pulling it first"})
                options = {**DEFAULT_OPTIONS, **(body.get("options") or {})}
                if chat:
                    request = llmkit.Request(messages=body.get("messages") or [])
                elif body.get("raw"):
                    request = llmkit.Request(prompt=body.get("prompt") or "")
                else:  # Ollama applies the model's template to a non-raw prompt
                    msgs = ([{"role": "system", "content": body["system"]}] if body.get("system") else []) + [{"role": "user", "content": body.get("prompt") or ""}]
                    request = llmkit.Request(messages=msgs)
                n_prompt = server.engine.count_tokens(request)
                limit = min(options["num_ctx"], server.engine.context_length)
                if n_prompt >= limit and body.get("truncate") is False:
                    return self._json(400, {"error": "the input length exceeds the context length"})
                max_tokens = options["num_predict"] if options["num_predict"] > 0 else limit - n_prompt
                constraint = None
                fmt = body.get("format")
                if fmt == "json":
                    constraint = llmkit.JsonSchema(schema={"type": "object"})
                elif isinstance(fmt, dict):
                    constraint = llmkit.JsonSchema(schema=fmt)
                params = llmkit.SamplingParams(
                    temperature=options["temperature"], top_p=options["top_p"], top_k=max(0, options["top_k"]), min_p=options["min_p"],
                    max_tokens=max(1, min(max_tokens, limit - n_prompt)), stop=options["stop"] or [],
                    seed=None if options["seed"] < 0 else options["seed"], repetition_penalty=options["repeat_penalty"],
                    presence_penalty=options["presence_penalty"], frequency_penalty=options["frequency_penalty"], constraint=constraint,
                )
                start = time.perf_counter_ns()
                if body.get("stream", True):
                    return self._stream_reply(request, params, chat, body["model"], start, n_prompt)
                out = server.engine.generate(request, params)[0]
                total = time.perf_counter_ns() - start
                reply = self._base(body["model"], chat, out.text)
                reply.update(done=True, done_reason=out.finish_reason, **_metrics(total, out.metrics.ttft, n_prompt, out.usage.completion_tokens))
                self._json(200, reply)

            def _stream_reply(self, request, params, chat: bool, model: str, start: int, n_prompt: int) -> None:
                self._ndjson_start()
                stream = None
                try:
                    stream = server.engine.stream(request, params)
                    self._stream_lines(stream, chat, model, start, n_prompt)
                except llmkit.LLMKitError as exc:  # the model failed: Ollama reports it as an error line
                    self._line({"error": str(exc)})
                finally:
                    if stream is not None:
                        stream.close()  # a client that went away frees the model at once
                self._ndjson_end()

            def _stream_lines(self, stream, chat: bool, model: str, start: int, n_prompt: int) -> None:
                sent, first, tokens = 0, None, 0
                for chunk in stream:
                    if server.line_delay:
                        time.sleep(server.line_delay)
                    if self._client_gone():
                        raise _ClientGone
                    if server.fail_after_chunks is not None and sent >= server.fail_after_chunks:
                        self._line({"error": "an error was encountered while running the model"})
                        return
                    if first is None and chunk.token_ids:
                        first = (time.perf_counter_ns() - start) / 1e9
                    tokens += len(chunk.token_ids)
                    part = self._base(model, chat, chunk.text)
                    if chunk.finish_reason is not None:
                        part.update(done=True, done_reason=chunk.finish_reason,
                                    **_metrics(time.perf_counter_ns() - start, first, n_prompt, tokens))
                    self._line(part)
                    sent += 1

            def _client_gone(self) -> bool:
                """The client closed its connection (a readable socket with nothing to read)."""
                try:
                    readable, _, _ = select.select([self.connection], [], [], 0)
                    return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    return True

            # ---- wire format ----------------------------------------------------------------------

            def _base(self, model: str, chat: bool, text: str) -> dict:
                reply = {"model": model, "created_at": _now(), "done": False}
                if chat:
                    reply["message"] = {"role": "assistant", "content": text}
                else:
                    reply["response"] = text
                return reply

            def _json(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self._uncount()
                self.wfile.write(data)

            def _ndjson_start(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

            def _line(self, payload: dict) -> None:
                data = json.dumps(payload).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                self._lines += 1

            def _ndjson_end(self) -> None:
                self._uncount()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        Handler._counted, Handler._lines = False, 0
        return Handler


class _ClientGone(Exception):
    """The client closed the connection while its request was being served."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _metrics(total_ns: int, ttft_s: float | None, prompt_tokens: int, eval_tokens: int) -> dict:
    prompt_ns = int((ttft_s or 0) * 1e9)
    return {"total_duration": total_ns, "load_duration": 0, "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": prompt_ns, "eval_count": eval_tokens, "eval_duration": max(1, total_ns - prompt_ns)}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model-name", default="smollm2:135m")
    parser.add_argument("--n-threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    args = parser.parse_args()
    threads = {"n_threads": args.n_threads} if args.n_threads else {}
    with llmkit.load("llamacpp", llmkit.DEFAULT_MODEL, prefix_caching=False, **threads) as backing:
        with OllamaProtocolServer(backing, args.model_name, port=args.port) as server:
            print(server.url, flush=True)
            threading.Event().wait()


if __name__ == "__main__":
    main()
