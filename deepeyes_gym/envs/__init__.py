"""The environment library: env core, action parsing, tools, rewards, task suites."""

from .actions import Action, parse_action
from .core import DEFAULT_TOOLS, V1_TOOLS, DeepEyesEnv
from .episode import Episode, Turn
from .task import Task, TaskImageError, load_image
from .tools import Tool, ToolContext, ToolError, ToolResult, make_tool, register_tool
from .turns import IMAGE_TOKEN, THINK_PREFILL, EnvDelta, Message, PolicyTurn, StopReason

__all__ = [
    "Action", "parse_action", "DeepEyesEnv", "DEFAULT_TOOLS", "V1_TOOLS", "Episode", "Turn",
    "Task", "TaskImageError", "load_image", "Tool", "ToolContext", "ToolError", "ToolResult",
    "make_tool", "register_tool", "IMAGE_TOKEN", "THINK_PREFILL", "EnvDelta", "Message", "PolicyTurn",
    "StopReason",
]
