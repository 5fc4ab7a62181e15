// Drives the Cryptolens simulator with Cryptolens' official Node client (npm cryptolens
// 1.0.11) and prints what the client saw, one JSON object, for cryptolenssim's test.
// Usage: node cryptolens-node.js <base url> <token> <product id> <public key xml>
"use strict";
const { Key } = require("cryptolens");

async function main() {
  const [base, token, productArg, publicKey] = process.argv.slice(2);
  const product = Number(productArg);
  const out = {};

  // CreateKey with the client's defaults for everything but Period, Notes and F1: it
  // sends CustomerId=null, AllowedMachines=null, ResellerId=0 and NoOfKeys=1.
  const created = await Key.CreateKey(token, product, 30, "made by node", false, null, false, 2,
    null, 0, 1, true, false, true, false, false, false, false, false, false, false, base);
  if (created === null) throw new Error("CreateKey was refused");
  out.created = created.key;

  // GetKey asks for a signed answer (Sign=true, SignMethod=1) and verifies it.
  const license = await Key.GetKey(token, publicKey, product, created.key, 0, false, base);
  out.license = {
    key: license.Key, productId: license.ProductId, period: license.Period,
    days: (license.Expires - license.Created) / 86400, f1: license.F1, f2: license.F2,
    f3: license.F3, notes: license.Notes, maxNoOfMachines: license.MaxNoOfMachines,
    block: license.Block, signDate: license.SignDate,
  };

  await Key.ChangeNotes(token, product, created.key, "changed by node", base);
  const after = await Key.GetKey(token, publicKey, product, created.key, 0, false, base);
  out.notesAfterChange = after.Notes;

  // A tampered public key must fail verification: the signature is real.
  const wrong = publicKey.replace(/<Modulus>(.)/, (m, c) => "<Modulus>" + (c === "A" ? "B" : "A"));
  try {
    await Key.GetKey(token, wrong, product, created.key, 0, false, base);
    out.tamperedKeyVerified = true;
  } catch (e) {
    out.tamperedKeyVerified = false;
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack || e));
  process.exit(1);
});
