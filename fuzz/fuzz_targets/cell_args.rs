//! Every built-in cell's argument checking, as the API, MCP and the worker run it: never a
//! panic; what the registry accepts the cell's own check accepts too, has a sentence for
//! the approver, and derives a request key.
#![no_main]

use std::sync::OnceLock;

use idem_cells::builtin::{registry, Access};
use idem_cells::Registry;
use idem_core::ActionId;
use libfuzzer_sys::fuzz_target;

/// Every built-in cell, pointed at a closed port: nothing here calls a partner.
fn cells() -> &'static (Registry, Vec<String>) {
    static CELLS: OnceLock<(Registry, Vec<String>)> = OnceLock::new();
    CELLS.get_or_init(|| {
        let r = registry(
            |i| Access {
                base: "http://127.0.0.1:9".into(),
                credential: i.placeholder.into(),
                ..Access::default()
            },
            &|_, _| {},
        );
        let names = r.iter().map(|c| c.name().as_str().to_owned()).collect();
        (r, names)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    let Ok(args) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let (registry, names) = cells();
    let name = &names[usize::from(pick) % names.len()];
    let cell = registry.get(name).expect("listed cell");
    let own = cell.validate(&args);
    let summary = cell.summary(&args);
    match registry.check(name, &args) {
        Ok(()) => {
            assert!(
                own.is_ok(),
                "{name}: registry accepted what validate refuses"
            );
            if cell.effectful() {
                let _ = cell.key(ActionId::from_arguments("fuzz", cell.name(), &args), 0);
            }
            let _ = summary;
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
