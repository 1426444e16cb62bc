"""DeepEyes v1 tools: zoom in on a box of the original image, rotate the original image."""

from __future__ import annotations

import math
from typing import Any

from PIL import Image

from .base import Tool, ToolContext, ToolError, ToolResult

__all__ = ["ZoomInTool", "RotateTool"]

MIN_BOX_SIDE = 28  # below this the vision encoder sees less than one patch
MAX_BOX_ASPECT = 100


def _pick_image(args: dict[str, Any], ctx: ToolContext) -> Image.Image:
    index = args.get("image_index", 1)
    if not 1 <= index <= len(ctx.images):
        raise ToolError(f"image_index must be between 1 and {len(ctx.images)}, got {index}")
    return ctx.images[index - 1]


class ZoomInTool(Tool):
    name = "image_zoom_in_tool"
    description = (
        "Zoom in on a region of the image by cropping it with a bounding box; the crop comes back "
        "at full resolution."
    )
    parameters = {
        "type": "object",
        "properties": {
            "bbox_2d": {
                "type": "array",
                "items": {"type": "number"},
                "minItems": 4,
                "maxItems": 4,
                "description": "[x1, y1, x2, y2] in pixels of the original image (top-left, bottom-right)",
            },
            "label": {"type": "string", "description": "what the region contains (optional)"},
            "image_index": {"type": "integer", "description": "which input image, 1-based (default 1)"},
        },
        "required": ["bbox_2d"],
    }

    def parse(self, arguments: Any) -> dict[str, Any]:
        args = super().parse(arguments)
        box = args["bbox_2d"]
        if len(box) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box
        ):
            raise ToolError("bbox_2d must be a list of 4 finite numbers [x1, y1, x2, y2]")
        return args

    def execute(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        img = _pick_image(args, ctx)
        w, h = img.size
        x1, y1, x2, y2 = (float(v) for v in args["bbox_2d"])
        if x1 >= x2 or y1 >= y2:
            raise ToolError(
                f"invalid bbox_2d {args['bbox_2d']}: need x1 < x2 and y1 < y2 (top-left, bottom-right)"
            )
        # Clamp a box that sticks out of the image; refuse one that lies entirely outside it.
        cx1, cy1, cx2, cy2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
        if cx1 >= cx2 or cy1 >= cy2:
            raise ToolError(f"bbox_2d {args['bbox_2d']} lies outside the image of size {w}x{h}")
        bw, bh = cx2 - cx1, cy2 - cy1
        if min(bw, bh) < MIN_BOX_SIDE:
            raise ToolError(
                f"bbox_2d {args['bbox_2d']} is too small ({bw:.0f}x{bh:.0f} px inside the image); "
                f"each side must be at least {MIN_BOX_SIDE} px"
            )
        if max(bw, bh) / min(bw, bh) > MAX_BOX_ASPECT:
            raise ToolError(f"bbox_2d {args['bbox_2d']} has an aspect ratio above {MAX_BOX_ASPECT}")
        crop = img.crop((round(cx1), round(cy1), round(cx2), round(cy2)))
        label = args.get("label")
        head = f"Zoomed in on {label}" if label else "Zoomed in"
        return ToolResult(f"<tool_response>\n{head}:\n<image>\n</tool_response>", [crop])


class RotateTool(Tool):
    name = "image_rotate_tool"
    description = "Rotate the image counter-clockwise by an angle in degrees."
    parameters = {
        "type": "object",
        "properties": {
            "angle": {"type": "number", "description": "degrees, counter-clockwise"},
            "image_index": {"type": "integer", "description": "which input image, 1-based (default 1)"},
        },
        "required": ["angle"],
    }

    def parse(self, arguments: Any) -> dict[str, Any]:
        args = super().parse(arguments)
        if not math.isfinite(args["angle"]):
            raise ToolError("angle must be a finite number")
        return args

    def execute(self, args: dict[str, Any], ctx: ToolContext) -> ToolResult:
        img = _pick_image(args, ctx)
        angle = float(args["angle"]) % 360.0
        out = img.rotate(angle, expand=True, resample=Image.BICUBIC)
        return ToolResult(f"<tool_response>\nRotated by {angle:g} degrees:\n<image>\n</tool_response>", [out])
