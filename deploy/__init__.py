"""Deployment files shipped inside the package, so `iotrt unit` works from a plain pip install:
`iotrt.service` (the systemd unit template) and `install.sh` (install / upgrade / uninstall)."""
