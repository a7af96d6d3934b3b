//! Installing a signed snapshot or delta: stream, verify every entry, apply in one transaction.
//!
//! The bundle is read frame by frame (constant memory for a million cards); each entry is inserted
//! only after its MAC verified, all inside one `BEGIN IMMEDIATE` transaction that commits only after the
//! manifest's MAC, count and digest verified. Any failure drops the transaction: the old cache is untouched
//! and the error names the bad entry. A version not above the installed one is refused (rollback).

use std::io::Read;

use redeemd_contract::snapshot::{
    BundleError, BundleKind, BundleVerifier, EntryOp, MAGIC, MAX_FRAME, Manifest, Verified,
    check_magic,
};
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::schema::CACHE_ENTRY_DDL;
use super::{Store, StoreError};
use crate::engine::Now;

/// What an install changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    pub manifest: Manifest,
    pub upserts: u64,
    pub removals: u64,
}

impl Store {
    /// Verifies and installs the bundle read from `input`.
    pub fn install_bundle(
        &mut self,
        mut input: impl Read,
        now: Now,
    ) -> Result<InstallReport, StoreError> {
        // The rollback floor is the installed version in the MACed terminal state, and also the manifest
        // row's version column, so that neither editing that row nor the state can let an old snapshot in.
        let column: Option<i64> = self
            .conn
            .query_row("SELECT version FROM cache_manifest WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        let floor = column
            .map_or(0, |v| u64::try_from(v).unwrap_or(u64::MAX))
            .max(self.state.cache_version);
        let installed = (floor > 0).then_some(floor);
        let installed_verified = self.cache.as_ref().map(|m| m.version);
        let read = |buf: &mut [u8], input: &mut dyn Read| {
            input.read_exact(buf).map_err(StoreError::BundleRead)
        };
        let mut magic = [0u8; MAGIC.len()];
        read(&mut magic, &mut input)?;
        check_magic(&magic)?;
        let mut verifier = BundleVerifier::new(&self.keys.cache, &self.cfg.terminal_id);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (mut upserts, mut removals) = (0u64, 0u64);
        let mut buf = Vec::new();
        let mut frame_index = 0u64;
        let mut bundle_version = 0i64;
        let manifest = loop {
            let mut len = [0u8; 4];
            input.read_exact(&mut len).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => StoreError::Bundle(BundleError::Frame {
                    index: frame_index,
                    reason: "bundle ends before its manifest (truncated)".into(),
                }),
                _ => StoreError::BundleRead(e),
            })?;
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_FRAME {
                return Err(BundleError::Frame {
                    index: frame_index,
                    reason: format!("frame of {len} bytes exceeds {MAX_FRAME}"),
                }
                .into());
            }
            buf.resize(len, 0);
            read(&mut buf, &mut input)?;
            frame_index += 1;
            match verifier.frame(&buf)? {
                Verified::Preamble(p) => {
                    if p.merchant_id != self.cfg.merchant_id {
                        return Err(StoreError::WrongMerchant {
                            expected: self.cfg.merchant_id.clone(),
                            found: p.merchant_id,
                        });
                    }
                    if let Some(v) = installed
                        && p.version <= v
                    {
                        return Err(StoreError::Rollback {
                            offered: p.version,
                            installed: v,
                        });
                    }
                    bundle_version = i64::try_from(p.version).unwrap_or(i64::MAX);
                    match p.kind {
                        BundleKind::Full => tx.execute_batch(&format!(
                            "DROP TABLE cache_entry; {CACHE_ENTRY_DDL};"
                        ))?,
                        BundleKind::Delta if installed_verified.is_none() => {
                            return Err(StoreError::DeltaBase {
                                base: 0,
                                installed: installed.unwrap_or(0),
                            });
                        }
                        BundleKind::Delta => {}
                    }
                }
                Verified::Entry(e) => match e.op {
                    EntryOp::Upsert => {
                        tx.prepare_cached("INSERT OR REPLACE INTO cache_entry (card_ref, version, body, mac) VALUES (?1, ?2, ?3, ?4)")?
                            .execute(params![&e.card_ref.0[..], bundle_version, &e.body, &e.mac[..]])?;
                        upserts += 1;
                    }
                    EntryOp::Remove => {
                        tx.prepare_cached("DELETE FROM cache_entry WHERE card_ref = ?1")?
                            .execute([&e.card_ref.0[..]])?;
                        removals += 1;
                    }
                },
                Verified::Manifest(m) => break m,
            }
        };
        let mut extra = [0u8; 1];
        if input.read(&mut extra).map_err(StoreError::BundleRead)? != 0 {
            return Err(BundleError::Frame {
                index: frame_index,
                reason: "data after the manifest".into(),
            }
            .into());
        }
        if manifest.kind == BundleKind::Delta && Some(manifest.prev_version) != installed_verified {
            return Err(StoreError::DeltaBase {
                base: manifest.prev_version,
                installed: installed_verified.unwrap_or(0),
            });
        }
        let mut state = self.state.clone();
        state.cache_version = manifest.version;
        state.last_trusted_wall_ms = state
            .last_trusted_wall_ms
            .max(now.wall_ms.min(manifest.issued_at_ms));
        super::write_terminal_row(&tx, &state, &self.keys)?;
        tx.execute(
            "INSERT OR REPLACE INTO cache_manifest (id, version, signed, installed_wall_ms) VALUES (1, ?1, ?2, ?3)",
            params![manifest.version as i64, manifest.signed_bytes(&self.keys.cache), now.wall_ms],
        )?;
        tx.commit()?;
        self.reload().map_err(StoreError::from)?;
        Ok(InstallReport {
            manifest,
            upserts,
            removals,
        })
    }
}
