"""python-ismrmrd-server module (FIRE/OpenRecon config `streamrecon_kgmgt_cine_causal_service`): pipelines/kgmgt_cine_causal_service.xml through the project's gadgets."""
from pipelines.fire.adapter import run


def process(connection, config, metadata) -> None:
    run("kgmgt_cine_causal_service", connection, config, metadata)
