#!/usr/bin/env python3
"""Draws the dashboards from their own queries against the demo, as SVG.

Grafana cannot be installed where this project is developed (Debian has no
package), so the pictures in the README are made here instead: this script
starts `addreality-exporter --demo`, a `jobctl run` over the demo's players
(SMS backend `log`: nothing leaves), and a Prometheus scraping both every
second; lets them run; then asks Prometheus for every panel's query over
that time (Grafana's variables replaced: `$platform` by `.*`,
`$__rate_interval` by 30s, three demo polls) and draws each panel where the
dashboard puts it: lines for time series, the last value for stats. What
is drawn is what Prometheus answered; the drawing itself is plain, not
Grafana's. It is not part of the tests (it runs for minutes).

    cargo build --bins
    python3 dashboards/render.py [--minutes 4] [--bin-dir target/debug]

Writes dashboards/addreality-exporter.svg and dashboards/jobctl.svg. Needs
python3 and Debian's prometheus package; no Python packages.
"""

import argparse
import html
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
COLOURS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#f2495c", "#b877d9",
           "#8ab8ff", "#fade2a", "#96d98d", "#ff9830"]
COL, ROW = 50, 30  # pixels per grid column and grid row


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read().decode()


def wait_for(what, check, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"render.py: {what} did not happen within {seconds} s")


def rules(prometheus, journal, device_ids):
    sockets = "".join(
        f'[[sockets]]\nname = "s{d}"\nphone = "+7999{int(d):07d}"\nmodel = "simpal-d210"\n'
        f'powers = {{ platform_id = "1", device_id = "{d}" }}\n\n'
        for d in device_ids
    )
    return f'''[prometheus]
url = "{prometheus}"
interval = "2s"
timeout = "2s"

[journal]
path = "{journal}"

[sms]
backend = "log"

[budgets]
total_per_hour = 6

{sockets}[[jobs]]
name = "reboot offline players"
devices = {{ platform_id = "1" }}
metric = "addreality_device_online"
op = "=="
value = 0
for = "20s"
action = {{ command = "power_cycle", minutes = 1 }}
verify = {{ within = "30s" }}
guards = [{{ expr = "addreality_platform_up == 1", on = ["platform_id"] }}]

[[jobs]]
name = "players not playing"
devices = {{ platform_id = "1" }}
all = [
  {{ metric = "addreality_device_online", op = "==", value = 1 }},
  {{ expr = "addreality_device_playing == 0" }},
]
for = "1m"
action = {{ command = "power_cycle", minutes = 1 }}
'''


def start(args, log):
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def run_demo(bin_dir, minutes, work, procs):
    """Starts the three daemons (appended to `procs`), lets them run for
    `minutes`, and returns Prometheus's URL and the time range to draw."""
    exporter_port, jobctl_port, prom_port = free_port(), free_port(), free_port()
    log = open(os.path.join(work, "log"), "w")
    procs.append(start([os.path.join(bin_dir, "addreality-exporter"), "--demo",
                        "--listen", f"127.0.0.1:{exporter_port}"], log))
    metrics = wait_for("the demo's first poll", lambda: (
        lambda t: t if "addreality_device_online{" in t else None)(
        get(f"http://127.0.0.1:{exporter_port}/metrics")))
    device_ids = sorted(set(re.findall(r'addreality_device_online\{[^}]*device_id="(\d+)"', metrics)),
                        key=int)
    config = os.path.join(work, "prometheus.yml")
    with open(config, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: addreality
    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]
  - job_name: jobctl
    static_configs: [{{targets: ['127.0.0.1:{jobctl_port}']}}]
""")
    procs.append(start(["prometheus", f"--config.file={config}",
                        f"--storage.tsdb.path={work}/data",
                        f"--web.listen-address=127.0.0.1:{prom_port}"], log))
    prom = f"http://127.0.0.1:{prom_port}"
    wait_for("Prometheus", lambda: get(f"{prom}/-/ready"))
    rules_file = os.path.join(work, "rules.toml")
    with open(rules_file, "w") as f:
        f.write(rules(prom, os.path.join(work, "journal.db"), device_ids))
    procs.append(start([os.path.join(bin_dir, "jobctl"), "--config", rules_file, "run",
                        "--listen", f"127.0.0.1:{jobctl_port}"], log))
    began = time.time()
    print(f"render.py: running the demo for {minutes} min", file=sys.stderr)
    # A silence on one job, a minute in, so that held actions show.
    time.sleep(min(60, minutes * 30))
    subprocess.run([os.path.join(bin_dir, "jobctl"), "--config", rules_file, "silence", "add",
                    "--job", "players not playing", "--for", "1h", "--comment",
                    "render.py: a silence for the picture", "--author", "render.py"],
                   stdout=log, stderr=subprocess.STDOUT, check=True)
    time.sleep(max(0, began + minutes * 60 - time.time()))
    return prom, began + 5, time.time()


def query_range(prom, expr, start, end, step):
    expr = expr.replace("$__rate_interval", "30s").replace("$platform", ".*")
    url = f"{prom}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": step})
    answer = json.loads(get(url))
    if answer.get("status") != "success":
        sys.exit(f"render.py: {expr}: {answer}")
    return answer["data"]["result"]


def legend(fmt, labels):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or \
        ",".join(f"{k}={v}" for k, v in labels.items())


def fmt_value(v, unit):
    if v != v:
        return "NaN"
    if unit == "percentunit":
        return f"{v * 100:.1f}%"
    if unit == "s":
        return f"{v * 1000:.0f} ms" if abs(v) < 1 and v != 0 else f"{v:.1f} s"
    if abs(v) >= 1000:
        return f"{v / 1000:.1f}k"
    return f"{v:.2f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))


def esc(text):
    return html.escape(str(text), quote=True)


def draw_panel(panel, series, start, end):
    g = panel["gridPos"]
    x, y, w, h = g["x"] * COL, g["y"] * ROW, g["w"] * COL - 6, g["h"] * ROW - 6
    unit = panel["fieldConfig"]["defaults"].get("unit")
    out = [f'<g transform="translate({x + 3},{y + 3})">',
           f'<rect width="{w}" height="{h}" rx="3" fill="#181b1f" stroke="#2c3235"/>',
           f'<text x="8" y="18" fill="#ccccdc" font-size="13" font-weight="bold">{esc(panel["title"])}</text>']
    if panel["type"] == "stat":
        values = [v for _, points in series for _, v in points[-1:]]
        text = fmt_value(values[0], unit) if values else "No data"
        out.append(f'<text x="{w / 2}" y="{h / 2 + 18}" fill="{COLOURS[0]}" font-size="34" '
                   f'text-anchor="middle" font-weight="bold">{esc(text)}</text>')
    else:
        legend_rows = min(len(series), 4)
        left, top, right, bottom = 56, 28, w - 10, h - 18 - 14 * legend_rows
        values = [v for _, points in series for _, v in points if v == v]
        defaults = panel["fieldConfig"]["defaults"]
        lo = defaults.get("min", min(values) if values else 0)
        hi = defaults.get("max", max(values) if values else 1)
        lo, hi = min(lo, 0) if lo >= 0 else lo, hi
        if hi <= lo:
            hi = lo + 1
        sx = lambda t: left + (t - start) / (end - start) * (right - left)
        sy = lambda v: bottom - (v - lo) / (hi - lo) * (bottom - top)
        for frac in (0, 0.5, 1):
            v = lo + frac * (hi - lo)
            out.append(f'<line x1="{left}" x2="{right}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#2c3235"/>')
            out.append(f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" fill="#8e8e8e" font-size="10" '
                       f'text-anchor="end">{esc(fmt_value(v, unit))}</text>')
        for i, (name, points) in enumerate(series):
            colour = COLOURS[i % len(COLOURS)]
            drawn = [(t, v) for t, v in points if v == v]
            path = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in drawn)
            if len(drawn) == 1:
                t, v = drawn[0]
                out.append(f'<circle cx="{sx(t):.1f}" cy="{sy(v):.1f}" r="2" fill="{colour}"/>')
            if path:
                out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
            if i < legend_rows:
                ly = h - 8 - 14 * (legend_rows - 1 - i)
                more = f" (+{len(series) - legend_rows} more)" if i == legend_rows - 1 and len(series) > legend_rows else ""
                out.append(f'<rect x="10" y="{ly - 8}" width="10" height="3" fill="{colour}"/>')
                out.append(f'<text x="26" y="{ly}" fill="#ccccdc" font-size="10">{esc(name[:70] + more)}</text>')
        if not series:
            out.append(f'<text x="{w / 2}" y="{h / 2}" fill="#8e8e8e" font-size="13" '
                       f'text-anchor="middle">No data</text>')
        minutes = (end - start) / 60
        out.append(f'<text x="{right}" y="{h - 4}" fill="#8e8e8e" font-size="9" text-anchor="end">'
                   f'last {minutes:.1f} min</text>')
    out.append("</g>")
    return out


def render(dashboard, prom, start, end):
    panels = dashboard["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) * ROW + 40
    body = []
    for panel in panels:
        if panel["type"] == "row":
            y = panel["gridPos"]["y"] * ROW
            body.append(f'<text x="6" y="{y + 22}" fill="#ccccdc" font-size="15" '
                        f'font-weight="bold">{esc(panel["title"])}</text>')
            continue
        series = []
        for target in panel["targets"]:
            for result in query_range(prom, target["expr"], start, end, 2):
                points = [(float(t), float(v)) for t, v in result["values"]]
                series.append((legend(target.get("legendFormat", ""), result["metric"]), points))
        body.extend(draw_panel(panel, series, start, end))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{24 * COL}" height="{height + 30}" '
            f'font-family="sans-serif"><rect width="100%" height="100%" fill="#111217"/>'
            f'<g transform="translate(0,36)">')
    title = (f'<text x="8" y="24" fill="#ccccdc" font-size="18" font-weight="bold">'
             f'{esc(dashboard["title"])}</text><text x="{24 * COL - 8}" y="24" fill="#8e8e8e" '
             f'font-size="11" text-anchor="end">rendered from the dashboard\'s queries against '
             f'the demo, {stamp}; not a Grafana screenshot</text>')
    return head + "\n".join(body) + "</g>" + title + "</svg>\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4)
    parser.add_argument("--bin-dir", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "..", "target")), "debug"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dashboards-render-") as work:
        procs = []
        try:
            prom, start, end = run_demo(args.bin_dir, args.minutes, work, procs)
            for name in ["addreality-exporter", "jobctl"]:
                with open(os.path.join(HERE, f"{name}.json")) as f:
                    dashboard = json.load(f)
                with open(os.path.join(HERE, f"{name}.svg"), "w") as f:
                    f.write(render(dashboard, prom, start, end))
                print(f"render.py: wrote dashboards/{name}.svg", file=sys.stderr)
        finally:
            for p in procs:
                p.terminate()
                p.wait()


if __name__ == "__main__":
    main()
