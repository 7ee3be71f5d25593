"""Face geometry: detection and canvases, mesh, UV maps."""
