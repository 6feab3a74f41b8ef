"""Built-in nodes: sensing -> perception -> action.

NODES maps the `kind` a graph names to the module that implements it. Each module declares
`SPEC` (a `iotrt.node.NodeSpec`) and `main(node)`; importing it must do no work, so the graph
can read its parameters without running it. Adding a node means adding a module and one line.
"""

NODES: dict[str, str] = {
    # sensing
    "camera": "iotrt.nodes.sensing.camera",
    "imu": "iotrt.nodes.sensing.imu",
    "odometry": "iotrt.nodes.sensing.odometry",
    # perception
    "detector": "iotrt.nodes.perception.detector",
    "identity": "iotrt.nodes.perception.identity",
    "pose": "iotrt.nodes.perception.pose",
    # action
    "rules": "iotrt.nodes.action.rules",
    "lock": "iotrt.nodes.action.lock",
    "motor": "iotrt.nodes.action.motor",
    "webhook": "iotrt.nodes.action.webhook",
    "program": "iotrt.nodes.action.program",
    "mqtt": "iotrt.nodes.action.mqtt",
    "homeassistant": "iotrt.nodes.action.homeassistant",
    "log": "iotrt.nodes.action.log",
    "snapshot": "iotrt.nodes.action.snapshot",
    # observe: recordings (docs/record.md), the web page (docs/web.md)
    "recorder": "iotrt.nodes.observe.recorder",
    "clip": "iotrt.nodes.observe.clip",
    "web": "iotrt.nodes.observe.web",
}

# Former names of kinds -> their names now. A graph that uses a former name validates and runs
# exactly as the new kind; the verbs that read a graph file (`iotrt validate`, `up`, `graph`,
# `unit`, `reload`) print a note on stderr asking for the new name.
RENAMED: dict[str, str] = {
    "command": "program",   # the actuator that runs a program per command (was `kind: command`)
}
# Former module paths of built-in nodes (a graph's `run:` may name one) -> their paths now;
# noted the same way.
RENAMED_MODULES: dict[str, str] = {
    "iotrt.nodes.action.command": "iotrt.nodes.action.program",
}
