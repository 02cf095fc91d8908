//! Every sealed column floatlm keeps, and the AAD that binds a blob to its
//! row.
//!
//! [`SealedColumn`] is the one vocabulary of where a sealed blob lives: the
//! App seals and opens through it, storage names the rows it reads and
//! re-seals by it, backups check the sealed columns of a file by it, and
//! the tests tamper with it. [`SealedColumn::at`] is the only way to build
//! the [`SealContext`] that sealing and opening take, so a table or column
//! name is never typed twice.
//!
//! The AAD is `"floatlm-seal-v1"` followed by table, column, row id and key
//! id, each as a 4-byte big-endian length and its bytes. A blob copied into
//! another row, column or table, or relabelled with another key id, does
//! not open. Those bytes are pinned by a test below: changing them would
//! make every existing database and backup unreadable.

/// A sealed column: its table, its column and the column naming its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealedColumn {
    /// `keyring_canary.sealed`, row `key_id`: a fixed text sealed under a
    /// master key, proving every instance holds the database's keys.
    Canary,
    /// `licenses.sealed`, row `license_id`: the vendor-signed license text.
    License,
    /// `identities.sealed`, row `id`: an identity's secret (also the
    /// stand-in secret of unknown identities, row `stand-in`, kept in
    /// memory only).
    Identity,
    /// `ticket_keys.sealed`, row `id` (the Unix second its period starts):
    /// a resumption ticket key.
    TicketKey,
}

impl SealedColumn {
    /// Every sealed column.
    pub const ALL: [SealedColumn; 4] = [
        SealedColumn::Canary,
        SealedColumn::License,
        SealedColumn::Identity,
        SealedColumn::TicketKey,
    ];

    /// The table the column is in.
    pub const fn table(self) -> &'static str {
        match self {
            SealedColumn::Canary => "keyring_canary",
            SealedColumn::License => "licenses",
            SealedColumn::Identity => "identities",
            SealedColumn::TicketKey => "ticket_keys",
        }
    }

    /// The column's name (every sealed column is called `sealed`).
    pub const fn column(self) -> &'static str {
        "sealed"
    }

    /// The column whose value is the row id the blob is bound to.
    pub const fn row_column(self) -> &'static str {
        match self {
            SealedColumn::Canary => "key_id",
            SealedColumn::License => "license_id",
            SealedColumn::Identity | SealedColumn::TicketKey => "id",
        }
    }

    /// The sealed column of `table`, if it has one.
    pub fn of_table(table: &str) -> Option<SealedColumn> {
        Self::ALL.into_iter().find(|c| c.table() == table)
    }

    /// The blob of this column in row `row_id`: what sealing and opening
    /// bind it to.
    pub fn at(self, row_id: &str) -> SealContext<'_> {
        SealContext {
            column: self,
            row_id,
        }
    }
}

/// Where one sealed blob lives (a column and a row); becomes the AAD.
/// Built by [`SealedColumn::at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealContext<'a> {
    column: SealedColumn,
    row_id: &'a str,
}

impl SealContext<'_> {
    pub fn column(&self) -> SealedColumn {
        self.column
    }

    pub fn row_id(&self) -> &str {
        self.row_id
    }

    /// The AAD of a blob of this row sealed under key `key_id`.
    pub(super) fn aad(&self, key_id: &str) -> Vec<u8> {
        let mut aad = b"floatlm-seal-v1".to_vec();
        for part in [
            self.column.table(),
            self.column.column(),
            self.row_id,
            key_id,
        ] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AAD of every column, byte for byte, as databases and backups
    /// written since 0.1 hold it: a change here is a change of format.
    #[test]
    fn the_aad_of_every_column_is_pinned() {
        let hex = |c: SealedColumn, row: &str| hex::encode(c.at(row).aad("k1"));
        assert_eq!(
            hex(SealedColumn::Canary, "k1"),
            "666c6f61746c6d2d7365616c2d7631\
             0000000e6b657972696e675f63616e617279\
             000000067365616c6564\
             000000026b31\
             000000026b31"
        );
        assert_eq!(
            hex(SealedColumn::License, "L1"),
            "666c6f61746c6d2d7365616c2d7631\
             000000086c6963656e736573\
             000000067365616c6564\
             000000024c31\
             000000026b31"
        );
        assert_eq!(
            hex(SealedColumn::Identity, "stand-in"),
            "666c6f61746c6d2d7365616c2d7631\
             0000000a6964656e746974696573\
             000000067365616c6564\
             000000087374616e642d696e\
             000000026b31"
        );
        assert_eq!(
            hex(SealedColumn::TicketKey, "1700000000"),
            "666c6f61746c6d2d7365616c2d7631\
             0000000b7469636b65745f6b657973\
             000000067365616c6564\
             0000000a31373030303030303030\
             000000026b31"
        );
    }

    #[test]
    fn every_column_is_found_by_its_table() {
        for c in SealedColumn::ALL {
            assert_eq!(SealedColumn::of_table(c.table()), Some(c));
        }
        assert_eq!(SealedColumn::of_table("slots"), None);
    }
}
