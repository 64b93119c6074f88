"""File containers for serialized records: TFRecord framing and elephant-bird blocks."""
