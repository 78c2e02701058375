"""Writing a file whole or not at all: write_file(path, write) replaces path by what write(f) writes."""
import os
import tempfile





def write_file(path, write):
    """Replace the file at path by what write(f) writes to f (opened binary), whole or not at all: into a temporary
    file of a name no other process uses, in the same folder, then renamed over path. Two processes writing the
    same file at once both succeed; the last rename wins."""
    with tempfile.NamedTemporaryFile("wb", dir=os.path.dirname(path) or ".", prefix=os.path.basename(path) + ".",
                                     suffix=".tmp", delete=False) as f:
        try:
            write(f)
        except BaseException:
            f.close()
            os.remove(f.name)
            raise
    os.replace(f.name, path)
