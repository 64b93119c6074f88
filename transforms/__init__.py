"""Beam PTransforms and DoFns of the export job (imports twml, never pipeline)."""
