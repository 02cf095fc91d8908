//! `floatlm vendor keygen|sign`: the vendor's side of licensing.

use anyhow::{bail, Context};
use clap::Subcommand;
use std::path::PathBuf;

use crate::app::write_private_file;
use crate::domain::license::{parse_definition, VendorSigningKey};

#[derive(Subcommand, Debug)]
pub enum VendorCommand {
    /// Write a new Ed25519 key pair: DIR/vendor.key (private, 0600) and DIR/vendor.pub.
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Sign a license definition (TOML) into a license file.
    Sign {
        /// The vendor's private key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// License definition, TOML (see config/example-license.toml).
        definition: PathBuf,
        /// Output license file.
        #[arg(short = 'o', long = "out", value_name = "FILE.lic")]
        out: PathBuf,
    },
}

pub fn run(cmd: VendorCommand) -> anyhow::Result<()> {
    match cmd {
        VendorCommand::Keygen { out } => {
            let key_path = out.join("vendor.key");
            let pub_path = out.join("vendor.pub");
            if key_path.exists() || pub_path.exists() {
                bail!(
                    "{} or {} already exists; refusing to overwrite a vendor key",
                    key_path.display(),
                    pub_path.display()
                );
            }
            let key = VendorSigningKey::generate();
            write_private_file(&key_path, &key.to_text())
                .with_context(|| format!("writing {}", key_path.display()))?;
            std::fs::write(&pub_path, key.public().to_text())
                .with_context(|| format!("writing {}", pub_path.display()))?;
            println!("vendor key {} written:", key.public().id());
            println!(
                "  private: {} (keep it safe; it signs licenses)",
                key_path.display()
            );
            println!(
                "  public:  {} (give it to servers as vendor_keys)",
                pub_path.display()
            );
            Ok(())
        }
        VendorCommand::Sign {
            key,
            definition,
            out,
        } => {
            let key_text = std::fs::read_to_string(&key)
                .with_context(|| format!("reading vendor key {}", key.display()))?;
            let key = VendorSigningKey::parse(&key_text)
                .map_err(|e| anyhow::anyhow!("vendor key {}: {e}", key.display()))?;
            let def_text = std::fs::read_to_string(&definition)
                .with_context(|| format!("reading {}", definition.display()))?;
            let def = parse_definition(&def_text)
                .with_context(|| format!("in {}", definition.display()))?;
            let text = key.sign(&def)?;
            std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "signed license {} serial {} ({} feature(s)) with vendor key {} -> {}",
                def.license_id,
                def.serial,
                def.features.len(),
                key.public().id(),
                out.display()
            );
            Ok(())
        }
    }
}
