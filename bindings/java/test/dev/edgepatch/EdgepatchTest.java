package dev.edgepatch;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;

import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

/** The Java binding end to end: predict, train-save-load-switch, bad input, progress and cancel.
 *  Run by {@code bindings/java/test.sh} (CI) with {@code -Dedgepatch.root} the repository. */
public class EdgepatchTest {
    static final String[] COLOURS = {"red", "green", "blue"};
    static final String ROOT = System.getProperty("edgepatch.root", ".");
    static final String CAT = ROOT + "/models/mobilenet_v2/reference/chelsea.png";

    @Rule public TemporaryFolder tmp = new TemporaryFolder();

    /** A noisy solid image of colour {@code label}, {@code size × size}. */
    static byte[] colour(int label, int size, Random rng) {
        byte[] img = new byte[size * size * 3];
        for (int i = 0; i < img.length; i++) {
            img[i] = (byte) (i % 3 == label ? 180 + rng.nextInt(76) : rng.nextInt(60));
        }
        return img;
    }

    static Trainer colourTrainer(Runtime rt, String[] labels, boolean swapped, long seed) {
        Trainer tr = new Trainer(rt, "logits", labels, 32);
        tr.configure(new Trainer.Options().batch(8));
        Random rng = new Random(seed);
        for (int label = 0; label < 3; label++) {
            for (int i = 0; i < 8; i++) {
                tr.add(colour(label, 24, rng), 24, 24, swapped ? 2 - label : label);
            }
        }
        return tr;
    }

    static EdgepatchException.Kind kindOf(Runnable r) {
        try {
            r.run();
        } catch (EdgepatchException e) {
            assertTrue(e.getMessage(), !e.getMessage().isEmpty());
            return e.kind();
        }
        fail("no exception");
        return null;
    }

    @Test
    public void predictsFromFilesArraysAndBuffers() {
        try (Runtime rt = new Runtime()) {
            Prediction[] top = rt.predictFile(CAT, 3);
            assertEquals("Egyptian cat", top[0].label);
            assertTrue(top[0].probability > top[1].probability && top[1].probability > top[2].probability);
            byte[] red = colour(0, 40, new Random(1));
            Prediction[] a = rt.predict(red, 40, 40, 5);
            ByteBuffer direct = ByteBuffer.allocateDirect(red.length).put(red);
            direct.flip();
            Prediction[] b = rt.predict(direct, 40, 40, 5);
            assertEquals(5, a.length);
            for (int i = 0; i < 5; i++) {
                assertEquals(a[i].index, b[i].index);
                assertEquals(a[i].label, rt.labels()[a[i].index]);
            }
            assertEquals("cpu", rt.device());
        }
    }

    @Test
    public void trainSaveLoadSwitchRoundTrip() throws Exception {
        try (Runtime rt = new Runtime();
             Trainer colours = colourTrainer(rt, COLOURS, false, 1);
             Trainer swapped = colourTrainer(rt, new String[] {"blue", "green", "red"}, true, 2)) {
            Trainer.FitResult r = colours.fit(4, 0.05f, 1, null);
            assertEquals(12, r.steps);
            assertTrue(Float.isNaN(r.validationAccuracy));
            swapped.fit(4, 0.05f, 1, null);
            File file = new File(tmp.getRoot(), "colours.patch");
            colours.save(file.getPath());
            assertArrayEquals(colours.patchBytes(), Files.readAllBytes(file.toPath()));
            String dir = new File(tmp.getRoot(), "store").getPath();
            try (Store store = new Store(dir, true)) {
                store.add("colours", colours.patchBytes());
                store.add("swapped", swapped.patchBytes());
                assertArrayEquals(new String[] {"colours", "swapped"}, store.names());
            }
            try (Runtime fresh = new Runtime(); Store store = new Store(dir, false)) {
                Random rng = new Random(3);
                for (String task : new String[] {"colours", "swapped", "colours"}) {
                    store.activate(fresh, task);
                    assertEquals(task, fresh.active());
                    for (int label = 0; label < 3; label++) {
                        assertEquals(task, COLOURS[label], fresh.predict(colour(label, 24, rng), 24, 24, 1)[0].label);
                    }
                }
                fresh.loadPatchFile("file", file.getPath());
                fresh.activate("file");
                assertEquals("blue", fresh.predict(colour(2, 24, rng), 24, 24, 1)[0].label);
                fresh.activate(null);
                assertNull(fresh.active());
                assertEquals(1000, fresh.labels().length);
                assertEquals(Arrays.asList("colours", "file", "swapped"), Arrays.asList(fresh.patches()));
                store.remove("swapped");
                assertArrayEquals(new String[] {"colours"}, store.names());
                assertArrayEquals(colours.patchBytes(), store.get("colours"));
            }
        }
    }

    @Test
    public void progressListenerCancelAndResume() {
        try (Runtime rt = new Runtime(); Trainer tr = colourTrainer(rt, COLOURS, false, 1)) {
            List<Progress> seen = new ArrayList<>();
            tr.fit(2, 0f, 1, p -> seen.add(p));
            assertEquals(6, seen.size());
            for (int i = 0; i < 6; i++) {
                assertEquals(i + 1, seen.get(i).step);
                assertEquals(6, seen.get(i).totalSteps);
                assertEquals(i / 3, seen.get(i).epoch);
                assertTrue(Float.isFinite(seen.get(i).loss));
            }
            byte[] before = tr.patchBytes();
            assertEquals(EdgepatchException.Kind.CANCELLED, kindOf(() -> tr.fit(2, 0f, 2, p -> p.step < 3)));
            assertArrayEquals(before, tr.patchBytes());
            try {
                tr.fit(2, 0f, 2, p -> { throw new IllegalStateException("from the listener"); });
                fail("the listener's exception was lost");
            } catch (IllegalStateException e) {
                assertEquals("from the listener", e.getMessage());
            }
            // Cancelled with a checkpoint, the next fit resumes it to the uninterrupted patch.
            try (Trainer whole = colourTrainer(rt, COLOURS, false, 1);
                 Trainer part = colourTrainer(rt, COLOURS, false, 1)) {
                whole.fit(3, 0f, 5, null);
                String ckpt = new File(tmp.getRoot(), "fit.ckpt").getPath();
                part.configure(new Trainer.Options().checkpoint(ckpt, 2, true));
                assertEquals(EdgepatchException.Kind.CANCELLED, kindOf(() -> part.fit(3, 0f, 5, p -> p.step < 4)));
                part.fit(3, 0f, 5, null);
                assertArrayEquals(whole.patchBytes(), part.patchBytes());
            }
        }
    }

    @Test
    public void cancelAndBusyFromAnotherThread() throws Exception {
        try (Runtime rt = new Runtime(); Trainer tr = new Trainer(rt, "sb+logits", COLOURS, 64)) {
            Random rng = new Random(1);
            for (int i = 0; i < 48; i++) {
                tr.add(colour(i % 3, 64, rng), 64, 64, i % 3);
            }
            tr.configure(new Trainer.Options().batch(4));
            CountDownLatch started = new CountDownLatch(1);
            AtomicReference<Throwable> outcome = new AtomicReference<>();
            Thread fit = new Thread(() -> {
                try {
                    tr.fit(50, 0f, 1, p -> { started.countDown(); return true; });
                } catch (Throwable t) {
                    outcome.set(t);
                }
            });
            fit.start();
            assertTrue(started.await(120, TimeUnit.SECONDS));
            assertEquals(EdgepatchException.Kind.BUSY, kindOf(() -> tr.add(colour(0, 8, rng), 8, 8, 0)));
            // Predictions on the runtime go on while its trainer fits.
            assertEquals("Egyptian cat", rt.predictFile(CAT, 1)[0].label);
            tr.cancel();
            fit.join(120_000);
            assertTrue(String.valueOf(outcome.get()), outcome.get() instanceof EdgepatchException);
            assertEquals(EdgepatchException.Kind.CANCELLED, ((EdgepatchException) outcome.get()).kind());
        }
    }

    @Test
    public void badInputThrowsWithTheRuntimeMessage() throws Exception {
        Runtime rt = new Runtime();
        assertEquals(EdgepatchException.Kind.PATCH, kindOf(() -> rt.loadPatch("bad", new byte[] {'E', 'P'})));
        byte[] noise = new byte[4096];
        new Random(7).nextBytes(noise);
        assertEquals(EdgepatchException.Kind.PATCH, kindOf(() -> rt.loadPatch("bad", noise)));
        assertEquals(EdgepatchException.Kind.ARGUMENT, kindOf(() -> rt.predict(new byte[10], 4, 4, 1)));
        assertEquals(EdgepatchException.Kind.ARGUMENT, kindOf(() -> rt.predict(new byte[48], 4, 4, 0)));
        assertEquals(EdgepatchException.Kind.ARGUMENT, kindOf(() -> rt.predict((byte[]) null, 4, 4, 1)));
        assertEquals(EdgepatchException.Kind.ARGUMENT, kindOf(() -> rt.activate("nope")));
        assertEquals(EdgepatchException.Kind.ARGUMENT, kindOf(() -> rt.setDevice("tpu")));
        File broken = tmp.newFile("broken.png");
        Files.write(broken.toPath(), Arrays.copyOf(Files.readAllBytes(new File(CAT).toPath()), 2000));
        assertEquals(EdgepatchException.Kind.IMAGE, kindOf(() -> rt.predictFile(broken.getPath(), 1)));
        assertEquals(EdgepatchException.Kind.IO, kindOf(() -> rt.loadPatchFile("x", tmp.getRoot() + "/absent.patch")));
        String noStore = new File(tmp.getRoot(), "no-store").getPath();
        assertTrue(kindOf(() -> new Store(noStore, false)) != null);
        assertEquals(EdgepatchException.Kind.ARGUMENT, kindOf(() -> new Trainer(rt, "logits", new String[] {"one"}, 32)));
        assertEquals(EdgepatchException.Kind.ARGUMENT, kindOf(() -> new Trainer(rt, "nonsense", COLOURS, 32)));
        try (Trainer tr = new Trainer(rt, "logits", COLOURS, 32)) {
            assertEquals(EdgepatchException.Kind.ARGUMENT, kindOf(() -> tr.add(new byte[12], 2, 2, 3)));
            assertEquals(0, tr.size());
            assertEquals(EdgepatchException.Kind.ARGUMENT, kindOf(() -> tr.configure(new Trainer.Options().batch(0))));
            assertEquals(EdgepatchException.Kind.TRAIN, kindOf(tr::patchBytes));
            assertTrue(kindOf(() -> tr.fit(1, 0f, 0, null)) != null);
        }
        rt.close();
        try {
            rt.labels();
            fail("a closed runtime answered");
        } catch (IllegalStateException expected) {
            // closed handles are refused on the Java side
        }
    }
}
