"""The lab: test and benchmark infrastructure in network namespaces, kept out of the daemon's control plane.

    hosts.py   Lab: hosts, containers and the underlay switch as namespaces; ovl-dp daemons on them
    peers.py   tunnel peers that are not ovl-dp: the kernel's vxlan, OVS native tunnels, tinc
    ovs.py     OvsInstance: a private ovsdb-server + ovs-vswitchd per host namespace
    shell.py   LabError, running a command (sh), running it in a namespace (nsexec), mac_of
    demo.py    the shipped `ovl-dp lab` command
    etcd_demo.py  its --etcd variant: hosts joining through etcd, one killed and dropped
    members.py a daemon's membership as the lab reads it; the removal watcher run in a host namespace

The lab may use the control plane (control.ovs, control.procs) and the datapath;
the daemon's modules (control.cli but for the `lab` command, config, daemon,
bridge, ctl, report) never import the lab. Nothing is re-exported here: import
from the module that holds it.
"""
