import json, sys, time, os
from control.lab.hosts import Lab
mode = sys.argv[1]; extra = sys.argv[2:]
HZ = os.sysconf("SC_CLK_TCK")
def ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    run, wait, n = map(int, open(f"/proc/{pid}/schedstat").read().split())
    return int(f[11]), int(f[12]), run, wait, n
with Lab(2) as lab:
    lab.build()
    lab.start_mesh(mode, *extra)
    time.sleep(1.5)
    lab.ping(1, 2, count=3)
    for test, args in (("tcp", ()), ("udp", ("-u", "-l", "64", "-b", "0"))):
        before = {i: ticks(lab.daemons[i].proc.pid) for i in (1, 2)}
        c0 = {i: lab.ovl(i, "show") for i in (1, 2)}
        t = time.monotonic()
        r = lab.iperf3(1, 2, 3, *args)
        dt = time.monotonic() - t
        after = {i: ticks(lab.daemons[i].proc.pid) for i in (1, 2)}
        c1 = {i: lab.ovl(i, "show") for i in (1, 2)}
        end = r.get("end", {})
        bps = (end.get("sum_received") or end.get("sum") or {}).get("bits_per_second")
        lost = (end.get("sum") or {}).get("lost_percent")
        print(f"{test} {' '.join(extra) or 'default'}: {bps and bps/1e9:.3f} Gbit/s lost={lost} in {dt:.1f}s")
        for i in (1, 2):
            u = (after[i][0]-before[i][0])/HZ; s = (after[i][1]-before[i][1])/HZ
            d = {k: c1[i]["stats"][k]-c0[i]["stats"][k] for k in ("tap_rx","tap_tx","tap_rx_gso","tap_tx_gso")}
            w = {k: c1[i]["watch"].get(k,0)-c0[i]["watch"].get(k,0) for k in ("ring_tx","ring_sends","ring_fallback","ring_full")}
            dr = {k: c1[i]["drops"][k]-c0[i]["drops"][k] for k in c1[i]["drops"] if c1[i]["drops"][k]-c0[i]["drops"][k]}
            run = (after[i][2]-before[i][2])/1e9; wait = (after[i][3]-before[i][3])/1e9; n = after[i][4]-before[i][4]
            print(f"  h{i}: user {u:.2f}s sys {s:.2f}s on-cpu {run:.2f}s runqueue-wait {wait:.2f}s slices {n} (wait/slice {wait/max(n,1)*1e6:.0f} us)  {d} {w} drops {dr}")
