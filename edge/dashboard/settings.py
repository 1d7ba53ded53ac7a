"""The dashboard's config (configs/dashboard.yaml; `vqad dashboard` flags override it)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from edge.config import require
from edge.endpoints import check_endpoint
from edge.record.days import ProductionDays

# A token shorter than this is guessable by a script on the plant network in a day of tries.
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    """True for the names and addresses that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_peer(url: str) -> None:
    """ValueError unless `url` is a dashboard's base URL: http(s)://HOST:PORT[/PREFIX]."""
    require(
        url.startswith(("http://", "https://")) and "?" not in url and "#" not in url,
        f"peers: each a dashboard's http(s)://HOST:PORT[/PREFIX], got {url!r}",
    )


@dataclass(frozen=True)
class DashboardConfig:
    # The daemon's results endpoint (a SUB socket connects to it), or several daemons' (a list;
    # "a,b" on the command line): a plant's lines live on one page, each daemon's state in the
    # header. "" = none: a plant's view of a record that boxes share, its cameras' rejects, tally
    # and reviews from the record alone.
    results: tuple[str, ...] = ("tcp://127.0.0.1:5556",)
    # The line's record (sqlite:///PATH or postgresql://...): rejects with their evidence, and
    # reviews from the page. "" = the live stream only, without reviews.
    record: str = ""
    # The record's evidence folder on this machine, where a picture not at the path its row names
    # is looked for ("" = beside a SQLite file: a backup's copy of the record and its evidence).
    evidence_dir: str = ""
    # The daemon's Prometheus endpoint (http://HOST:PORT/metrics): up, ready, queue, drift. With
    # several results endpoints, one per daemon in the same order, or none. "" = none.
    metrics: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8080
    # Required off loopback. Also read from the VQAD_DASHBOARD_TOKEN environment variable.
    token: str = ""
    # A camera with no result for this long is shown as silent (red); a daemon never heard from
    # (no heartbeat, no result) for this long since the dashboard started, as down.
    silent_after_s: float = 10.0
    # The dashboard is best effort: at this niceness (0-19) the daemon's inference keeps the
    # CPU whenever both want it, and the page still gets what is idle.
    nice: int = 10
    # CURVE client keys when the daemon's results socket is encrypted.
    curve_secret: str = ""
    curve_server_key: str = ""
    # The record's daily tally counts the line's days: in this IANA time zone ("" = this
    # machine's, as `date` shows it), each from day_starts (HH:MM, a whole quarter hour; the
    # first shift's start, say) to the next.
    timezone: str = ""
    day_starts: str = "00:00"
    # The path a reverse proxy serves the dashboard under (/line3), which it takes off before
    # passing a request on: the API's image links and the token's cookie carry it. "" = none.
    root_path: str = ""
    # The cameras of the record's last 7 days that the page shows while they send nothing (the
    # dashboard started while the line stands), as fnmatch patterns. On a record that boxes
    # share, a line's own ("line3-*"); the stream's cameras are shown whatever.
    record_cameras: tuple[str, ...] = ("*",)
    # The other boxes' dashboards on a record they share (http://HOST:PORT, with the path a
    # proxy serves one under): a reject's picture that is not on this machine's disk is asked of
    # them, since each box keeps its evidence on its own disk. () = none.
    peers: tuple[str, ...] = ()
    # The token the peers require; "" = this dashboard's own (one for the plant's dashboards).
    # Also read from the VQAD_PEERS_TOKEN environment variable.
    peers_token: str = ""

    def __post_init__(self) -> None:
        require(1 <= self.port <= 65535, f"port must be 1-65535, got {self.port}")
        for name in ("results", "metrics"):  # one, or "a,b", from Python as from a command line
            if isinstance(value := getattr(self, name), str):
                object.__setattr__(self, name, tuple(v.strip() for v in value.split(",") if v.strip()))
        for endpoint in self.results:
            check_endpoint(endpoint, "the results endpoint")
        require(
            len(set(self.results)) == len(self.results), f"results: an endpoint given twice in {list(self.results)}"
        )
        require(bool(self.results) or bool(self.record), "a dashboard without a results endpoint needs a record")
        require(self.silent_after_s > 0, "silent_after_s must be > 0")
        require(0 <= self.nice <= 19, f"nice must be 0-19, got {self.nice}")
        require(
            is_loopback(self.host) or bool(self.token),
            f"binding the dashboard to {self.host!r} (beyond this machine) requires a token: "
            "--token or VQAD_DASHBOARD_TOKEN",
        )
        require(
            not self.token or len(self.token) >= MIN_TOKEN_CHARS,
            f"the token must have at least {MIN_TOKEN_CHARS} characters "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe())' makes one)",
        )
        require(all(m.startswith(("http://", "https://")) for m in self.metrics), "metrics: http(s) URLs")
        require(
            len(self.metrics) <= 1 if len(self.results) <= 1 else len(self.metrics) in (0, len(self.results)),
            f"metrics: one Prometheus endpoint per results endpoint, in the same order, or none; got "
            f"{len(self.metrics)} for {len(self.results)}",
        )
        require(bool(self.curve_secret) == bool(self.curve_server_key), "CURVE needs curve_secret and curve_server_key")
        require(
            self.root_path == "" or (self.root_path.startswith("/") and not self.root_path.endswith("/")),
            f"root_path must start with / and not end with one (/line3), got {self.root_path!r}",
        )
        require(all(p.strip() for p in self.record_cameras), "record_cameras: patterns, none empty ('*': every camera)")
        for peer in self.peers:
            check_peer(peer)
        self.production_days()  # an unknown zone or a start off the quarter hour: ValueError

    def production_days(self) -> ProductionDays:
        """The days the page's daily tally counts by."""
        return ProductionDays.parse(self.timezone, self.day_starts)
