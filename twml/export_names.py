"""The two file names every reader of an export needs: the manifest and the completion marker.

Defined here, below everything that reads or writes exports: ``twml.dataset`` (tf.data, no Beam)
and ``transforms.outputdir`` (which owns the rest of the output directory's layout) import them.
"""
__all__ = ["MANIFEST_NAME", "SUCCESS_NAME"]

MANIFEST_NAME = "_MANIFEST.json"
SUCCESS_NAME = "_SUCCESS"  # written last: the export is complete
