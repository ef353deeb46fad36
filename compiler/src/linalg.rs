//! linalg stage: placeholder replaced below.
use melior::ir::Module;
use crate::ir::IrError;
use crate::plan::Plan;
pub fn build(_p: &Plan) -> Result<Module<'static>, IrError> {
    Err(IrError::Verify { stage: "linalg" })
}
