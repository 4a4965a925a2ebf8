import ij.CompositeImage;
import ij.ImagePlus;
import ij.ImageStack;
import ij.io.FileSaver;
import ij.measure.Calibration;
import ij.process.ByteProcessor;
import ij.process.ColorProcessor;
import ij.process.FloatProcessor;
import ij.process.ImageProcessor;
import ij.process.LUT;
import ij.process.ShortProcessor;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.HashMap;
import java.util.Map;

/**
 * Writes TIFFs the way ImageJ 1.x saves them (FileSaver, headless), from raw pixels that
 * the tests generate with numpy. One argument per file to write, as ';'-separated
 * key=value fields:
 *
 *   out=PATH raw=PATH type=8|16|32|rgb width=W height=H channels=C slices=Z frames=T
 *   [unit=um pw=0.5 ph=0.5 pd=2 finterval=1.5 tunit=s] [lut=palette] [composite=1]
 *
 * RAW holds C*Z*T planes, little-endian, in ImageJ's stack order (channel fastest, then
 * slice, then frame); for type=rgb each plane is H*W*3 bytes (r, g, b per pixel).
 * Prints "WROTE PATH" per file; any failure exits non-zero.
 *
 * Run without compiling, like ImageJProbe.java:
 *   java -Djava.awt.headless=true -cp /usr/share/java/ij.jar tests/ImageJWriter.java SPEC...
 */
public class ImageJWriter {
    public static void main(String[] args) throws Exception {
        for (String spec : args) {
            Map<String, String> f = new HashMap<>();
            for (String field : spec.split(";")) {
                String[] kv = field.split("=", 2);
                f.put(kv[0], kv[1]);
            }
            write(f);
            System.out.println("WROTE " + f.get("out"));
        }
    }

    static void write(Map<String, String> f) throws IOException {
        int w = Integer.parseInt(f.get("width")), h = Integer.parseInt(f.get("height"));
        int c = Integer.parseInt(f.get("channels")), z = Integer.parseInt(f.get("slices"));
        int t = Integer.parseInt(f.get("frames"));
        String type = f.get("type");
        ByteBuffer raw = ByteBuffer.wrap(Files.readAllBytes(Paths.get(f.get("raw"))))
                .order(ByteOrder.LITTLE_ENDIAN);
        ImageStack stack = new ImageStack(w, h);
        for (int i = 0; i < c * z * t; i++) {
            stack.addSlice(null, plane(type, w, h, raw));
        }
        if (raw.hasRemaining()) {
            throw new IOException("raw data larger than the planes: " + f.get("raw"));
        }
        ImagePlus imp = new ImagePlus("generated", stack);
        imp.setDimensions(c, z, t);
        if (c * z * t > 1 && (c > 1 ? 1 : 0) + (z > 1 ? 1 : 0) + (t > 1 ? 1 : 0) > 1) {
            imp.setOpenAsHyperStack(true);
        }
        if ("1".equals(f.get("composite")) && c > 1) {
            imp = new CompositeImage(imp, CompositeImage.COMPOSITE);
        }
        if ("palette".equals(f.get("lut"))) {
            imp.getProcessor().setColorModel(paletteLut());
        }
        if (f.containsKey("unit")) {
            Calibration cal = imp.getCalibration();
            cal.setUnit(f.get("unit"));
            cal.pixelWidth = Double.parseDouble(f.get("pw"));
            cal.pixelHeight = Double.parseDouble(f.get("ph"));
            cal.pixelDepth = Double.parseDouble(f.getOrDefault("pd", "1"));
            if (f.containsKey("finterval")) {
                cal.frameInterval = Double.parseDouble(f.get("finterval"));
                cal.setTimeUnit(f.getOrDefault("tunit", "s"));
            }
        }
        FileSaver saver = new FileSaver(imp);
        boolean ok = imp.getStackSize() > 1 ? saver.saveAsTiffStack(f.get("out"))
                : saver.saveAsTiff(f.get("out"));
        if (!ok) {
            throw new IOException("ImageJ could not save " + f.get("out"));
        }
    }

    static ImageProcessor plane(String type, int w, int h, ByteBuffer raw) {
        int n = w * h;
        switch (type) {
            case "8": {
                byte[] p = new byte[n];
                raw.get(p);
                return new ByteProcessor(w, h, p, null);
            }
            case "16": {
                short[] p = new short[n];
                for (int i = 0; i < n; i++) p[i] = raw.getShort();
                return new ShortProcessor(w, h, p, null);
            }
            case "32": {
                float[] p = new float[n];
                for (int i = 0; i < n; i++) p[i] = raw.getFloat();
                return new FloatProcessor(w, h, p, null);
            }
            case "rgb": {
                int[] p = new int[n];
                for (int i = 0; i < n; i++) {
                    int r = raw.get() & 0xff, g = raw.get() & 0xff, b = raw.get() & 0xff;
                    p[i] = 0xff000000 | (r << 16) | (g << 8) | b;
                }
                return new ColorProcessor(w, h, p);
            }
            default:
                throw new IllegalArgumentException("unknown type " + type);
        }
    }

    /** A colour map that is not grey, so ImageJ saves a palette (colour-mapped) TIFF. */
    static LUT paletteLut() {
        byte[] r = new byte[256], g = new byte[256], b = new byte[256];
        for (int i = 0; i < 256; i++) {
            r[i] = (byte) i;
            g[i] = (byte) ((i * 7) & 0xff);
            b[i] = (byte) (255 - i);
        }
        return new LUT(r, g, b);
    }
}
