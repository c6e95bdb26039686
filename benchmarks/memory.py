"""Memory readings shared by the benchmark scripts (Linux /proc)."""


def rss_mib(field: str) -> float:
    """This process's resident memory from /proc/self/status: "VmRSS" (now) or "VmHWM" (peak), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)
