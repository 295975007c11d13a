"""python-ismrmrd-server module (FIRE/OpenRecon config `streamrecon_cine_conventional`): pipelines/cine_conventional.xml through the project's gadgets."""
from pipelines.fire.adapter import run


def process(connection, config, metadata) -> None:
    run("cine_conventional", connection, config, metadata)
