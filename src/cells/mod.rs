//! Which cell a node or a session lives in, and the cells this instance serves.
//!
//! A cell is one scheduling domain: its keys share the hash tag `{prefix:name}`, so it
//! lives in one Redis slot (one core) and every script stays atomic within it. A deployment
//! lists its cells in `[[cells]]` (or has the one `[cell].name`); every instance serves
//! every cell — a sweeper, a presence beat and an inbox consumer run per cell.
//!
//! The rule, in one place ([`Cells::resolve`]): a peer's tenant decides its cell (the
//! credential's `tenant`, or the frame's `tenant_id` in open mode); a tenant listed in no
//! cell, and a peer without tenant, live in the default cell — unless the credential
//! carries a `cell` claim, which places a tenant-less peer (a public GPU fleet serving one
//! region) in that cell. A claim that contradicts the tenant's cell is refused. A node's
//! capacity is reserved atomically within its cell, so a node serves exactly one cell.

pub mod spread;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Config;
use crate::store::{Store, StoreError};
use crate::telemetry::metrics::Metrics;

/// One cell this instance serves.
pub struct Cell {
    pub store: Store,
    /// Last time (ms) this cell's inbox consumer completed a read (readiness needs it).
    pub inbox_alive_at: AtomicU64,
    /// How many presence beats succeeded in this cell: the inbox consumer waits for one
    /// before it reads, since the beat creates the inbox stream (see
    /// [`crate::routing::inbox`]).
    beats: tokio::sync::watch::Sender<u64>,
}

impl Cell {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            inbox_alive_at: AtomicU64::new(0),
            beats: tokio::sync::watch::Sender::new(0),
        }
    }

    /// A presence beat succeeded (this instance is listed, its inbox stream exists).
    pub fn beat_done(&self) {
        self.beats.send_modify(|n| *n += 1);
    }

    /// Watch the count of successful beats.
    pub fn beats(&self) -> tokio::sync::watch::Receiver<u64> {
        self.beats.subscribe()
    }

    pub fn name(&self) -> &str {
        self.store.cell()
    }

    /// The inbox consumer read within `window_ms`.
    pub fn inbox_alive(&self, window_ms: u64) -> bool {
        let last = self.inbox_alive_at.load(Ordering::Relaxed);
        crate::protocol::now_ms().saturating_sub(last) <= window_ms
    }

    pub fn mark_inbox_alive(&self) {
        self.inbox_alive_at
            .store(crate::protocol::now_ms(), Ordering::Relaxed);
    }
}

/// Why a peer has no cell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CellError {
    #[error("the credential's cell {claim:?} is not served here")]
    Unknown { claim: String },
    #[error(
        "the credential's cell {claim:?} contradicts tenant {tenant:?}, which lives in cell {cell:?}"
    )]
    Contradicts {
        claim: String,
        tenant: String,
        cell: String,
    },
}

/// Every cell of the deployment and the tenant → cell map.
pub struct Cells {
    cells: Vec<Arc<Cell>>,
    default: usize,
    by_tenant: HashMap<String, usize>,
}

impl Cells {
    /// One store per configured cell, sharing one set of Redis connections.
    pub fn new(cfg: &Config, instance: &str, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        let first = Store::new(cfg, instance, metrics)?;
        let specs = cfg.cell_list();
        let mut cells = Vec::with_capacity(specs.len());
        let mut by_tenant = HashMap::new();
        let mut default = 0;
        for (i, spec) in specs.iter().enumerate() {
            let store = first.for_cell(cfg, &spec.name);
            if spec.default {
                default = i;
            }
            for t in &spec.tenants {
                by_tenant.insert(t.clone(), i);
            }
            cells.push(Arc::new(Cell::new(store)));
        }
        if cells.is_empty() {
            cells.push(Arc::new(Cell::new(first)));
        }
        Ok(Self {
            cells,
            default,
            by_tenant,
        })
    }

    /// The cell of everyone without a listed tenant or a `cell` claim.
    pub fn default_cell(&self) -> &Arc<Cell> {
        &self.cells[self.default]
    }

    /// Every cell, the default first among equals (configuration order).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Cell>> {
        self.cells.iter()
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Cell>> {
        self.cells.iter().find(|c| c.name() == name)
    }

    /// The cell of a peer with `tenant` whose credential claims `claim` (see the module
    /// comment for the rule).
    pub fn resolve(
        &self,
        tenant: Option<&str>,
        claim: Option<&str>,
    ) -> Result<&Arc<Cell>, CellError> {
        let by_tenant = tenant.and_then(|t| self.by_tenant.get(t)).copied();
        let Some(claim) = claim else {
            return Ok(&self.cells[by_tenant.unwrap_or(self.default)]);
        };
        let Some(claimed) = self.cells.iter().position(|c| c.name() == claim) else {
            return Err(CellError::Unknown {
                claim: claim.into(),
            });
        };
        match (tenant, by_tenant) {
            (None, _) => Ok(&self.cells[claimed]),
            (Some(_), Some(i)) if i == claimed => Ok(&self.cells[claimed]),
            (Some(t), i) => {
                let i = i.unwrap_or(self.default);
                Err(CellError::Contradicts {
                    claim: claim.into(),
                    tenant: t.into(),
                    cell: self.cells[i].name().into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CellSpec;

    fn cells() -> Cells {
        let cfg = Config {
            cells: vec![
                CellSpec {
                    name: "eu".into(),
                    tenants: vec!["acme".into()],
                    default: true,
                },
                CellSpec {
                    name: "us".into(),
                    tenants: vec!["globex".into()],
                    default: false,
                },
            ],
            ..Config::default()
        };
        Cells::new(&cfg, "i-test", Arc::new(Metrics::new())).expect("cells")
    }

    #[test]
    fn tenants_pick_their_cell_and_claims_place_only_tenantless_peers() {
        let c = cells();
        let name = |r: Result<&Arc<Cell>, CellError>| r.map(|c| c.name().to_string());
        assert_eq!(name(c.resolve(None, None)), Ok("eu".into()));
        assert_eq!(name(c.resolve(Some("globex"), None)), Ok("us".into()));
        assert_eq!(name(c.resolve(Some("unlisted"), None)), Ok("eu".into()));
        assert_eq!(name(c.resolve(None, Some("us"))), Ok("us".into()));
        assert_eq!(name(c.resolve(Some("globex"), Some("us"))), Ok("us".into()));
        assert!(matches!(
            c.resolve(Some("acme"), Some("us")),
            Err(CellError::Contradicts { .. })
        ));
        assert!(matches!(
            c.resolve(Some("unlisted"), Some("us")),
            Err(CellError::Contradicts { .. })
        ));
        assert!(matches!(
            c.resolve(None, Some("mars")),
            Err(CellError::Unknown { .. })
        ));
        assert_eq!(
            c.get("us").map(|c| c.store.keys.prefix().to_string()),
            Some("{switchyard:us}:".into())
        );
    }
}
