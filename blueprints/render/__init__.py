"""Pure rendering: app spec (+ a few facts about the node) -> the text of every file a VM runs.

Nothing here talks to Pulumi or a cloud; the blueprints wire these texts into resources, and
`blueprints render` writes them to disk.
"""

from blueprints.render.context import NodeContext
from blueprints.render.single_vm import (
    check_app,
    file_permissions,
    render_cloud_init,
    render_node_files,
)

__all__ = ["NodeContext", "check_app", "file_permissions", "render_cloud_init", "render_node_files"]
