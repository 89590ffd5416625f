-- A protected VM's failover network settings (docs/networking.md): per NIC, keep the
-- address or a new one for failovers and for test copies, as JSON
-- (`lifeboat_types::NetworkSettings`). Portable SQL.
ALTER TABLE protections ADD COLUMN network_settings TEXT NOT NULL DEFAULT '{}';
