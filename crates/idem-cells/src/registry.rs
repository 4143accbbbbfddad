//! The cells a worker can run, by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::Cell;

/// Cells by name. An action for a cell that is not here goes to `dead`.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    cells: BTreeMap<String, Arc<dyn Cell>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, cell: impl Cell) -> Self {
        self.cells
            .insert(cell.name().as_str().to_owned(), Arc::new(cell));
        self
    }

    /// Add a cell already behind an `Arc` (shared with other registries or tests).
    pub fn with_arc(mut self, cell: Arc<dyn Cell>) -> Self {
        self.cells.insert(cell.name().as_str().to_owned(), cell);
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Cell>> {
        self.cells.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Cell>> {
        self.cells.values()
    }
}
