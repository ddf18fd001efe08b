//! Any bytes into the DTC reader: it must answer (a tree or findings), never panic; and what
//! reads cleanly must read back to the same tree once written out again.
#![no_main]

use std::sync::OnceLock;

use flowgate::dtc::catalogue::Catalogue;
use libfuzzer_sys::fuzz_target;

fn catalogue() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../flow-templates/catalogue");
        Catalogue::load(&dir).unwrap_or_else(|e| panic!("catalogue: {e}"))
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(flow) = flowgate::dtc::reader::read(data, catalogue()) {
        let again = flowgate::dtc::reader::read(&flow.to_bytes(), catalogue());
        assert_eq!(again.as_ref().ok(), Some(&flow), "a clean file does not read back the same");
    }
});
